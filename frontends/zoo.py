"""Model zoo of conversion-friendly ANNs: ReLU, BatchNorm, average pooling only (no max pooling).

Every model normalises its [0, 1] pixel input inside (so attacks work in pixel space) and is sized from
the input shape, so the same architecture serves 28x28 grey and 64x64 colour images. Residual nets merge
branch and shortcut by a learnable weighted sum, initialised 0.5 / 0.5.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from spikeshield.compiler.ir.errors import ConfigError

ARCHITECTURES = ("lenet", "vgg11", "resnet20", "wrn16-4")
ACTIVATIONS = ("relu", "qcfs")


class _FloorStraightThrough(torch.autograd.Function):
    """``floor`` forward, the identity's gradient backward (training through the quantiser)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return torch.floor(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return grad


class QCFS(nn.Module):
    """Quantisation-clip-floor-shift activation (Bu et al., ICLR 2022) with ``levels`` L and a
    learned ceiling ``lam``: ``lam * clamp(floor(x * L / lam + 0.5) / L, 0, 1)``.

    An IF neuron with threshold ``lam``, reset by subtraction and a membrane starting at
    ``lam / 2`` sends exactly this over T = L steps, so conversion needs no calibration (every
    frontend lowers the pattern into a quantised ReLU, ``fuse_quantized_relu``)."""

    def __init__(self, levels: int = 8, ceiling: float = 4.0) -> None:
        super().__init__()
        if levels < 1:
            raise ConfigError(f"QCFS needs at least 1 level, got {levels}")
        self.levels = levels
        self.ceiling = nn.Parameter(torch.tensor([float(ceiling)]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        steps = _FloorStraightThrough.apply(x * self.levels / self.ceiling + 0.5)
        return torch.clamp(steps / self.levels, 0, 1) * self.ceiling


def quantize_activations(model: nn.Module, levels: int) -> nn.Module:
    """``model`` with every ``nn.ReLU`` replaced by a :class:`QCFS` of ``levels`` levels."""
    for name, child in model.named_children():
        if isinstance(child, nn.ReLU):
            setattr(model, name, QCFS(levels))
        else:
            quantize_activations(child, levels)
    return model


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, on inputs in [0, 1]."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _conv_bn_relu(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class LeNet(nn.Module):
    """LeNet-5 with average pooling and batch norm: conv6-pool-conv16-pool-fc120-fc84-fc."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, width: float = 1.0) -> None:
        super().__init__()
        c, h, w = input_shape
        c1, c2 = max(1, int(6 * width)), max(1, int(16 * width))
        self.features = nn.Sequential(
            nn.Conv2d(c, c1, 5, padding=2, bias=False), nn.BatchNorm2d(c1), nn.ReLU(), nn.AvgPool2d(2),
            nn.Conv2d(c1, c2, 5, bias=False), nn.BatchNorm2d(c2), nn.ReLU(), nn.AvgPool2d(2),
        )
        flat = c2 * (((h // 2) - 4) // 2) * (((w // 2) - 4) // 2)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(flat, int(120 * width)), nn.ReLU(),
            nn.Linear(int(120 * width), int(84 * width)), nn.ReLU(),
            nn.Linear(int(84 * width), num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class VGG11(nn.Module):
    """VGG-11 with batch norm and average pooling; pools are skipped once the map is 1 pixel wide."""

    CONFIG = (64, "A", 128, "A", 256, 256, "A", 512, 512, "A", 512, 512, "A")

    def __init__(self, input_shape: Sequence[int], num_classes: int, width: float = 1.0) -> None:
        super().__init__()
        c, h, w = input_shape
        layers: list[nn.Module] = []
        for item in self.CONFIG:
            if item == "A":
                if min(h, w) >= 2:
                    layers.append(nn.AvgPool2d(2))
                    h, w = h // 2, w // 2
            else:
                cout = max(1, int(item * width))
                layers += _conv_bn_relu(c, cout)
                c = cout
        self.features = nn.Sequential(*layers)
        hidden = max(1, int(512 * width))
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(c * h * w, hidden), nn.ReLU(), nn.Dropout(0.2),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    """``relu(a * branch(x) + b * shortcut(x))`` with learnable ``a``, ``b`` (init 0.5)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.branch = nn.Sequential(
            *_conv_bn_relu(cin, cout, stride),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.branch_weight = nn.Parameter(torch.tensor(0.5))
        self.shortcut_weight = nn.Parameter(torch.tensor(0.5))
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.branch_weight * self.branch(x) + self.shortcut_weight * self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet (post-activation basic blocks, 1x1 conv shortcuts, global average pool)."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        blocks_per_stage: int,
        widths: Sequence[int],
    ) -> None:
        super().__init__()
        c, h, w = input_shape
        stem = widths[0]
        layers: list[nn.Module] = _conv_bn_relu(c, stem)
        cin = stem
        for stage, cout in enumerate(widths[1:]):
            for i in range(blocks_per_stage):
                stride = 2 if (i == 0 and stage > 0 and min(h, w) >= 2) else 1
                if stride == 2:
                    h, w = (h + 1) // 2, (w + 1) // 2
                layers.append(BasicBlock(cin, cout, stride))
                cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def build_model(
    arch: str,
    input_shape: Sequence[int],
    num_classes: int,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    width: float = 1.0,
    activation: str = "relu",
    levels: int = 8,
) -> nn.Module:
    """A zoo model with input normalisation inside; ``width`` scales channel counts (tests use < 1);
    ``activation`` ``qcfs`` trains for conversion (:class:`QCFS` with ``levels`` levels)."""
    if activation not in ACTIVATIONS:
        raise ConfigError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
    if len(input_shape) != 3:
        raise ConfigError(f"zoo models take (C, H, W) images, got input shape {tuple(input_shape)}")
    if not width > 0:
        raise ConfigError(f"width must be positive, got {width}")
    c = input_shape[0]
    if arch == "lenet":
        if min(input_shape[1:]) < 12:
            raise ConfigError(f"lenet needs images of at least 12x12, got {tuple(input_shape)}")
        body: nn.Module = LeNet(input_shape, num_classes, width)
    elif arch == "vgg11":
        body = VGG11(input_shape, num_classes, width)
    elif arch == "resnet20":
        widths = [max(1, int(k * width)) for k in (16, 16, 32, 64)]
        body = ResNet(input_shape, num_classes, 3, widths)
    elif arch == "wrn16-4":
        widths = [max(1, int(k * width)) for k in (16, 64, 128, 256)]
        body = ResNet(input_shape, num_classes, 2, widths)
    else:
        raise ConfigError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    norm = Normalize(mean or [0.0] * c, std or [1.0] * c)
    if activation == "qcfs":
        quantize_activations(body, levels)
    return nn.Sequential(OrderedDict(normalize=norm, net=body))
