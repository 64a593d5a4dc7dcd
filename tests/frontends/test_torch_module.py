import pytest
import torch
from torch import nn

from spikeshield.compiler.driver.pt2 import export_pt2
from spikeshield.compiler.ir.errors import ModelLoadError, UnsupportedOpError
from spikeshield.frontends.torch_module import from_module, from_pt2
from spikeshield.frontends.zoo import ARCHITECTURES, build_model
from spikeshield.runtime.executor import GraphExecutor


def _randomise_bn(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_fx_lowering_reproduces_logits(arch):
    torch.manual_seed(0)
    shape = (3, 16, 16)
    model = _randomise_bn(build_model(arch, shape, 10, [0.4, 0.5, 0.6], [0.2, 0.25, 0.3], width=0.25))
    x = torch.rand(4, *shape)
    graph = from_module(model, shape)
    assert (GraphExecutor(graph)(x) - model(x)).abs().max() <= 1e-5


@pytest.mark.parametrize("arch", ["lenet", "resnet20"])
def test_pt2_lowering_reproduces_logits(arch, tmp_path):
    torch.manual_seed(1)
    model = _randomise_bn(build_model(arch, (1, 28, 28), 10, [0.1], [0.3], width=0.5))
    path = tmp_path / "m.pt2"
    export_pt2(model, (1, 28, 28), path)
    x = torch.rand(5, 1, 28, 28)
    assert (GraphExecutor(from_pt2(path))(x) - model(x)).abs().max() <= 1e-5
    # The example input stored with the program must be small, not the storage of a data set.
    weight_bytes = sum(t.numel() * 4 for t in model.state_dict().values())
    assert path.stat().st_size < 2 * weight_bytes + 400_000


class _Bad(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x):
        return torch.sigmoid(self.pool(self.conv(x))).flatten(1)


def test_every_unsupported_op_is_listed_with_a_fix():
    with pytest.raises(UnsupportedOpError) as info:
        from_module(_Bad(), (1, 8, 8))
    message = str(info.value)
    assert "MaxPool2d" in message and "AvgPool2d" in message  # the fix
    assert "sigmoid" in message  # found even though it follows the max pool
    assert "`spikeshield ops`" in message and len(message) <= 300


def test_functional_relu_view_and_constants():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(16, 8), nn.Linear(8, 3)
            self.register_buffer("mean", torch.tensor(0.5))

        def forward(self, x):
            x = (x - self.mean) * 2.0
            x = x.view(x.size(0), -1)
            return self.fc2(torch.relu(self.fc1(x)) + 1.0)

    model = Net().eval()
    x = torch.rand(3, 1, 4, 4)
    assert (GraphExecutor(from_module(model, (1, 4, 4)))(x) - model(x)).abs().max() <= 1e-5


@pytest.mark.parametrize("content", [b"", b"not a zip at all", b"PK\x03\x04broken"])
def test_corrupt_pt2_is_a_typed_error(tmp_path, content):
    path = tmp_path / "bad.pt2"
    path.write_bytes(content)
    with pytest.raises(ModelLoadError, match="bad.pt2"):
        from_pt2(path)


def test_a_constant_the_lowering_would_compute_is_bounded_before_it_is_allocated(tmp_path):
    """A .pt2 whose graph calls aten.ones with sizes edited to 2^20 x 2^20 (4 TiB)."""
    import json
    import zipfile

    class Ones(nn.Module):
        def forward(self, x):
            return x + torch.ones(3, 5).sum()

    genuine, hostile = tmp_path / "ones.pt2", tmp_path / "bomb.pt2"
    torch.export.save(torch.export.export(Ones(), (torch.rand(2, 4),)), genuine)
    with zipfile.ZipFile(genuine) as src, zipfile.ZipFile(hostile, "w") as out:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename.endswith("models/model.json"):
                text = json.dumps(json.loads(data))
                assert '"as_ints": [3, 5]' in text
                data = text.replace('"as_ints": [3, 5]', '"as_ints": [1048576, 1048576]').encode()
            out.writestr(item, data)
    with pytest.raises(ModelLoadError, match="the constant computed by aten.ones.default has "
                       "1,099,511,627,776 elements"):
        from_pt2(hostile)


class _DeviceCheck(nn.Module):
    """The reference paper's style: a normalisation that checks the device, and a mode flag."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.5]))
        self.fc = nn.Linear(16, 3)

    def forward(self, x, find_max_mem: bool = False):
        mean = self.mean.cuda() if x.device.type == "cuda" else self.mean
        x = (x - mean).flatten(1)
        if find_max_mem:
            return x
        return self.fc(torch.relu(x))


def test_an_untraceable_module_falls_back_to_torch_export_and_flags_are_concrete_args():
    torch.manual_seed(0)
    model = _DeviceCheck().eval()
    x = torch.rand(5, 1, 4, 4)
    graph = from_module(model, (1, 4, 4))  # fx stops at the device check; export does not
    assert torch.allclose(GraphExecutor(graph).eval()(x, None), model(x), atol=1e-6)
    flat = from_module(model, (1, 4, 4), concrete_args={"find_max_mem": True})
    assert torch.allclose(GraphExecutor(flat).eval()(x, None), model(x, True), atol=1e-6)


class _DataDependent(nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # no tracer can follow this
            return x.flatten(1)
        return -x.flatten(1)


def test_when_both_tracers_fail_the_error_names_the_line_that_stopped_them():
    with pytest.raises(UnsupportedOpError) as info:
        from_module(_DataDependent(), (1, 4, 4))
    message = str(info.value)
    assert message.count("test_torch_module.py:") == 2 and "if x.sum() > 0" in message
    assert len(message) <= 300, len(message)


# ---- in-place ops as statements (issue 39): their result is discarded, their write is not ------
class _InPlaceStatement(nn.Module):
    """conv -> one in-place statement on ``out`` -> conv -> linear, as published ResNets write
    ``out.add_(residual)`` or ``F.relu(out, inplace=True)`` without using the result."""

    def __init__(self, statement: str):
        super().__init__()
        self.statement = statement
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(4 * 6 * 6, 5)

    def forward(self, x):
        out = self.conv1(x)
        res = self.conv2(out)
        s = self.statement
        if s == "add_":
            out.add_(res)
        elif s == "F.relu(inplace)":
            torch.nn.functional.relu(out, inplace=True)
        elif s == "nn.ReLU(inplace)":
            self.relu(out)
        elif s == "mul_":
            out.mul_(0.5)
        elif s == "clamp_":
            out.clamp_(0, 1)
        elif s == "relu_":
            out.relu_()
        elif s == "alias +=":
            idt = out
            out += res
            out = self.conv2(torch.relu(out)) + idt  # idt is the tensor ``out`` was written into
        elif s == "input relu_":
            x.relu_()
            out = out + self.conv1(x)
        return self.fc(out.flatten(1))


IN_PLACE_STATEMENTS = ["add_", "F.relu(inplace)", "nn.ReLU(inplace)", "mul_", "clamp_", "relu_",
                       "alias +=", "input relu_"]


@pytest.mark.parametrize("statement", IN_PLACE_STATEMENTS)
def test_an_in_place_statement_changes_every_later_use(statement):
    torch.manual_seed(3)
    model = _InPlaceStatement(statement).eval()
    x = 4 * torch.rand(4, 3, 6, 6) - 2  # conv outputs on both sides of 0 and of 1
    with torch.no_grad():
        expected = model(x.clone())
    graph = from_module(model, (3, 6, 6))
    got = GraphExecutor(graph).eval()(x.clone())
    assert (got - expected).abs().max() <= 1e-5
    with torch.no_grad():  # lowering changed neither the model's weights nor its outputs
        assert torch.equal(model(x.clone()), expected)


def test_an_in_place_op_on_a_reshaped_view_is_refused_in_one_line():
    class ViewWrite(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3, padding=1)
            self.fc = nn.Linear(2 * 4 * 4, 3)

        def forward(self, x):
            out = self.conv(x)
            out.view(out.size(0), -1).relu_()  # writes into ``out`` through a flat view
            return self.fc(out.flatten(1))

    with pytest.raises(UnsupportedOpError, match="in-place op on a reshaped view") as info:
        from_module(ViewWrite().eval(), (1, 4, 4))
    assert "\n" not in str(info.value)


def test_writing_into_a_slice_is_refused_not_dropped():
    class SliceWrite(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            x[:, 0] = 0.0
            return self.fc(x)

    with pytest.raises(UnsupportedOpError, match="cannot lower the model: .*(setitem|fill_)"):
        from_module(SliceWrite().eval(), (4,))


@pytest.mark.parametrize("dropout", ["F.dropout", "F.dropout2d"])
def test_dropout_left_on_at_inference_is_refused_and_dropout2d_lowers(dropout, tmp_path):
    """Found by the differential tester: ``nn.Dropout2d`` through ``.pt2`` (``aten.feature_dropout``)
    was refused; ``F.dropout(x, training=True)`` was lowered as the identity though it is random."""
    fn = getattr(torch.nn.functional, dropout.split(".")[1])

    class Model(nn.Module):
        def __init__(self, always: bool):
            super().__init__()
            self.always = always
            self.conv = nn.Conv2d(2, 2, 1)
            self.drop = nn.Dropout2d(0.3)
            self.fc = nn.Linear(8, 3)

        def forward(self, x):
            x = self.drop(self.conv(x))
            x = fn(x, 0.5, training=True) if self.always else x
            return self.fc(x.flatten(1))

    x = torch.rand(3, 2, 2, 2)
    model = Model(always=False).eval()
    path = tmp_path / "m.pt2"
    export_pt2(model, (2, 2, 2), path)
    for graph in (from_module(model, (2, 2, 2)), from_pt2(path)):
        assert (GraphExecutor(graph)(x) - model(x)).abs().max() <= 1e-5
    with pytest.raises(UnsupportedOpError, match=r"dropout with training=True"):
        from_module(Model(always=True).eval(), (2, 2, 2))


def test_tensor_arithmetic_methods_and_a_write_into_a_flat_view_lower_exactly():
    """Found by the differential tester: ``x.mul(0.5)`` (and ``add``, ``sub``, ``div``) were
    refused as unknown methods, and ``x = x.flatten(1); x = x.relu_()`` was refused because the
    write also reaches the 4-D tensor behind the view, which nothing reads afterwards."""

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 3, padding=1)
            self.fc = nn.Linear(2 * 3 * 3, 3)

        def forward(self, x):
            x = self.conv(x).mul(0.5).add(0.25).sub(x).div(2.0)
            x = x.flatten(1)
            x = x.relu_()
            return self.fc(x)

    model = Model().eval()
    x = torch.rand(4, 2, 3, 3)
    with torch.no_grad():
        expected = model(x.clone())
    assert (GraphExecutor(from_module(model, (2, 3, 3)))(x) - expected).abs().max() <= 1e-5
