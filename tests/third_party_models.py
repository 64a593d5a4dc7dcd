"""A residual network written the way third-party code writes it, not taken from spikeshield's zoo:
post-activation basic blocks (``out += shortcut(x)`` in place, ``F.relu`` after the add), 1x1
conv + BatchNorm projection shortcuts where the shape changes and identity shortcuts elsewhere,
global average pooling by ``F.adaptive_avg_pool2d`` and ``view``, input normalisation inside the
model (the pattern of kuangliu/pytorch-cifar and RobustBench's ResNets, written here from that
description). Used by the conversion regression test and benchmarks/conversion.py."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes, planes, stride=1, relu=lambda: F.relu):
        super().__init__()
        self.relu1, self.relu2 = relu(), relu()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False),
                                          nn.BatchNorm2d(planes))

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        return self.relu2(out)


class ResNet(nn.Module):
    """Three stages of ``num_blocks`` basic blocks; the first stage keeps the resolution."""

    def __init__(self, num_blocks=(1, 1, 1), widths=(16, 32, 64), num_classes=10, in_ch=1,
                 mean=(0.1307,), std=(0.3081,), relu_modules=False, normalize=True):
        super().__init__()
        # relu_modules: nn.ReLU, nn.AdaptiveAvgPool2d and nn.Flatten modules instead of F.relu,
        # F.adaptive_avg_pool2d and view (the same function), for converters that match only
        # modules (SpikingJelly's ann2snn); normalize=False leaves the input normalisation to the
        # caller (for converters that refuse the division).
        self.normalize, self.modules_only = normalize, relu_modules
        self.pool, self.flatten = nn.AdaptiveAvgPool2d(1), nn.Flatten()
        relu = nn.ReLU if relu_modules else (lambda: F.relu)
        self.relu = relu()
        self.register_buffer("mu", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("sigma", torch.tensor(std).view(1, -1, 1, 1))
        self.in_planes = widths[0]
        self.conv1 = nn.Conv2d(in_ch, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        layers = []
        for i, (n, w) in enumerate(zip(num_blocks, widths)):
            strides = [1 if i == 0 else 2] + [1] * (n - 1)
            for s in strides:
                layers.append(BasicBlock(self.in_planes, w, s, relu))
                self.in_planes = w
        self.layers = nn.Sequential(*layers)
        self.linear = nn.Linear(widths[-1], num_classes)

    def forward(self, x):
        if self.normalize:
            x = (x - self.mu) / self.sigma
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layers(out)
        if self.modules_only:
            return self.linear(self.flatten(self.pool(out)))
        out = F.adaptive_avg_pool2d(out, 1)
        out = out.view(out.size(0), -1)
        return self.linear(out)
