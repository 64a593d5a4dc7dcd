"""Lower a ``torch.fx`` graph (from ``symbolic_trace`` or ``torch.export``'s ``module()``) into the IR.

One converter table covers torch-level targets (``nn.Conv2d`` modules, ``F.relu``, ``operator.add``)
and ATen-level targets (``aten.conv2d.default``); ``torch.export`` graphs use the latter. Sub-graphs that
depend only on constants (parameters, buffers, Python numbers) are evaluated eagerly, so expressions such
as ``1 - alpha`` or ``(x - mean) / std`` lower to a per-channel :class:`Scale`.
"""

from __future__ import annotations

import math
import operator
from typing import Any, Callable

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from spikeshield.compiler.ir.errors import UnsupportedOpError
from spikeshield.compiler.ir.graph import Graph
from spikeshield.compiler.ir.ops import (
    AvgPool2d,
    BatchNorm,
    Conv2d,
    Flatten,
    Floor,
    Input,
    Linear,
    Output,
    ReLU,
    Scale,
    Shape,
    Sum,
)
from spikeshield.frontends.lowering import (
    MAXPOOL_HINT,
    UNSUPPORTED,
    Data,
    Lowering,
    Padded,
    _Unsupported,
    ann_frontend_coverage,
    as_tensor,
    clipped_relu,
    materialize,
    per_channel_vector,
    take_padding,
)

COVERAGE = ann_frontend_coverage("torch.fx and torch.export frontend (frontends.fx_lowering)")


aten = torch.ops.aten


class _BatchDim:
    """The (symbolic) batch size, from ``x.size(0)`` or ``x.shape[0]``."""


BATCH = _BatchDim()


def _check_constant_size(node: fx.Node, args: list[Any]) -> None:
    """A constant computed at lowering time stays within the tensor bound: its size arguments
    (lists of ints, as in ``aten.full`` or ``expand``) and ranges (``arange``) are checked before
    the call allocates anything."""
    from spikeshield.compiler.ir.limits import TENSOR_ELEMENTS, numel

    count = 0
    for arg in args:
        if isinstance(arg, (list, tuple)) and arg and all(isinstance(a, int) for a in arg):
            count = max(count, numel(abs(a) for a in arg))
    if "arange" in _target_name(node.target) or "range" == _target_name(node.target):
        numbers = [a for a in args if isinstance(a, (int, float)) and not isinstance(a, bool)]
        if numbers:
            count = max(count, int(max(abs(n) for n in numbers)))
    TENSOR_ELEMENTS.check(count, node.name, f"the constant computed by {_target_name(node.target)}")


def _is_const(value: Any) -> bool:
    if isinstance(value, (Data, Padded, _BatchDim, _Unsupported)):
        return False
    if isinstance(value, (list, tuple)):
        return all(_is_const(v) for v in value)
    return True


class FxLowering(Lowering):
    """Walks an fx graph once, emitting IR nodes; see :func:`lower_fx`."""

    def __init__(self, gm: fx.GraphModule, input_shape: Shape, name: str,
                 example_shape: Shape | None = None) -> None:
        super().__init__(name)
        # The input shape (with a batch dim) on which the graph is traced for in-place writes.
        self.example_shape = tuple(example_shape or (2, *input_shape))
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.env: dict[fx.Node, Any] = {}
        self.input_shape = tuple(int(s) for s in input_shape)
        self.current: fx.Node | None = None
        self.constants: dict[str, Any] = {}

    def label(self) -> str:
        return self.current.name

    # ---- walking --------------------------------------------------------------------------
    def run(self) -> Graph:
        writes = _writes(self.gm, self.example_shape)
        live = _live_nodes(self.gm.graph, writes)
        self.live = live
        self.position = {node: i for i, node in enumerate(self.gm.graph.nodes)}
        placeholders = [n for n in self.gm.graph.nodes if n.op == "placeholder" and n in live]
        if len(placeholders) != 1:
            raise UnsupportedOpError(
                f"the model takes {len(placeholders)} inputs; spikeshield compiles models with one "
                "image or feature tensor input"
            )
        for node in self.gm.graph.nodes:
            if node not in live:
                continue
            self.current = node
            if node.op == "placeholder":
                self.env[node] = self.emit(Input(self.input_shape), [], base="input")
            elif node.op == "get_attr":
                if node.target not in self.constants:  # a copy: in-place constant folding
                    self.constants[node.target] = _fetch_attr(self.gm, node.target)  # must not
                self.env[node] = self.constants[node.target]  # change the user's model
            elif node.op == "output":
                self._output(node)
            else:
                self.env[node] = self._call(node)
                self._follow_writes(node, writes.get(node, ()))
        self.raise_collected()
        return self.graph.validate()

    def _follow_writes(self, node: fx.Node, written: tuple[fx.Node, ...]) -> None:
        """After an op that wrote into earlier tensors (``out.add_(res)``, ``relu(x, inplace=True)``,
        a view's base), every later use of those tensors reads the op's result, as in torch."""
        result = self.env[node]
        for target in written:
            before = self.env.get(target)
            if isinstance(result, _Unsupported) or isinstance(before, _Unsupported):
                self.env[target] = UNSUPPORTED
            elif not isinstance(result, (Data, Padded)) and not isinstance(before, (Data, Padded)):
                continue  # constants: torch already changed the very tensor the walk holds
            elif not isinstance(before, (Data, Padded)) and before is not None:
                self.env[target] = self.unsupported(
                    f"an in-place op writing input-dependent values into the constant "
                    f"{target.name!r}", "compute a new tensor instead of writing into a parameter")
            elif not isinstance(result, (Data, Padded)):
                self.env[target] = self.unsupported(
                    f"an in-place op writing a constant into {target.name!r}",
                    "compute a new tensor instead of overwriting an activation")
            elif before is not None and _shape_of(self, before) != _shape_of(self, result):
                if self._read_after(target, node):  # (the base of a flat view, say)
                    self.env[target] = self.unsupported(
                        f"an in-place op on a reshaped view of {target.name!r}",
                        "apply the op before reshaping, or to the tensor itself")
            else:
                self.env[target] = result

    def _read_after(self, target: fx.Node, node: fx.Node) -> bool:
        """Whether a live node after ``node`` reads ``target``."""
        return any(user in self.live and self.position[user] > self.position[node]
                   for user in target.users)

    def _output(self, node: fx.Node) -> None:
        result = node.args[0]
        while isinstance(result, (tuple, list)) and len(result) == 1:
            result = result[0]
        value = self.env.get(result) if isinstance(result, fx.Node) else None
        if isinstance(value, _Unsupported):
            return
        value = materialize(self, value)
        if not isinstance(value, Data):
            raise UnsupportedOpError(
                "the model must return one tensor of logits computed from its input "
                f"(got {type(result).__name__})"
            )
        self.emit(Output(), [value], base="output")

    def _call(self, node: fx.Node) -> Any:
        args = fx.node.map_arg(node.args, lambda n: self.env[n])
        kwargs = fx.node.map_arg(node.kwargs, lambda n: self.env[n])
        flat = list(args) + list(kwargs.values())
        if any(isinstance(a, _Unsupported) for a in _flatten(flat)):
            self._check_known(node)  # still report unknown ops downstream of an unsupported one
            return UNSUPPORTED
        if any(isinstance(a, Padded) for a in _flatten(flat)) and not _takes_padding(
                node, self.modules):  # a consumer that cannot pad inside: the pad as a node
            args = fx.node.map_aggregate(args, lambda v: materialize(self, v))
            kwargs = fx.node.map_aggregate(kwargs, lambda v: materialize(self, v))
            flat = list(args) + list(kwargs.values())
        if node.op == "call_module":
            module = self.modules[node.target]
            if _is_const(flat):
                return module(*args, **kwargs)
            converter = _module_converter(module)
            if converter is None:
                hint = MAXPOOL_HINT if isinstance(module, nn.MaxPool2d) else ""
                return self.unsupported(f"{type(module).__name__} (module {node.target!r})", hint)
            return converter(self, module, *args, **kwargs)
        if node.op == "call_method":
            target: Any = node.target
            if _is_const(flat):
                return getattr(args[0], target)(*args[1:], **kwargs)
            converter = METHOD_CONVERTERS.get(target)
            if converter is None:
                return self.unsupported(f"Tensor.{target}()")
            return converter(self, *args, **kwargs)
        target = node.target
        if _is_const(flat):
            _check_constant_size(node, flat)
            return target(*args, **kwargs)
        converter = CONVERTERS.get(target)
        if converter is None:
            hint = MAXPOOL_HINT if "max_pool" in _target_name(target) else ""
            return self.unsupported(_target_name(target), hint)
        return converter(self, *args, **kwargs)


    def _check_known(self, node: fx.Node) -> None:
        if node.op == "call_module":
            module = self.modules[node.target]
            if _module_converter(module) is None:
                hint = MAXPOOL_HINT if isinstance(module, nn.MaxPool2d) else ""
                self.unsupported(f"{type(module).__name__} (module {node.target!r})", hint)
        elif node.op == "call_method":
            if node.target not in METHOD_CONVERTERS:
                self.unsupported(f"Tensor.{node.target}()")
        elif node.target not in CONVERTERS:
            hint = MAXPOOL_HINT if "max_pool" in _target_name(node.target) else ""
            self.unsupported(_target_name(node.target), hint)


# ---- helpers ------------------------------------------------------------------------------
def _flatten(values: Any) -> list:
    out = []
    for v in values:
        if isinstance(v, (list, tuple)):
            out.extend(_flatten(v))
        else:
            out.append(v)
    return out


def _target_name(target: Any) -> str:
    if isinstance(target, type):
        return target.__name__
    if isinstance(target, str):
        return target
    name = getattr(target, "__name__", None) or str(target)
    module = getattr(target, "__module__", "") or ""
    if isinstance(target, torch._ops.OpOverload):
        return f"aten.{target.__name__}" if "aten" in str(target) else str(target)
    if module.startswith("torch.nn.functional"):
        return f"F.{name}"
    if module == "_operator":
        return f"operator.{name}"
    return f"torch.{name}" if module.startswith("torch") else name


def _live_nodes(graph: fx.Graph, writes: dict[fx.Node, tuple[fx.Node, ...]]) -> set[fx.Node]:
    """The nodes the output depends on: through their arguments, and through in-place writes into
    a tensor that a live node reads afterwards (``out.add_(res)`` as a statement has no users in
    the fx graph, yet changes what every later use of ``out`` reads)."""
    live: set[fx.Node] = set()
    read_later: set[fx.Node] = set()  # nodes whose tensor a live node reads after this point
    for node in reversed(graph.nodes):
        if node.op == "output" or node in read_later or any(
                t in read_later for t in writes.get(node, ())):
            live.add(node)
            read_later.update(node.all_input_nodes)
    return live


class _WriteProbe(fx.Interpreter):
    """Runs the graph on fake tensors (shapes only: nothing is computed or allocated) and records,
    for each node, the earlier tensors whose version counter it bumped: the tensors it wrote into,
    views and their bases included, whatever the op (a module, a function, a method, ATen)."""

    def __init__(self, gm: fx.GraphModule, mode: Any) -> None:
        super().__init__(gm)
        self.mode = mode
        self.tensors: list[tuple[fx.Node, torch.Tensor, int]] = []
        self.writes: dict[fx.Node, tuple[fx.Node, ...]] = {}

    def fetch_attr(self, target: str) -> Any:
        value = super().fetch_attr(target)
        return self.mode.from_tensor(value) if isinstance(value, torch.Tensor) else value

    def run_node(self, node: fx.Node) -> Any:
        result = super().run_node(node)
        written = []
        for index, (earlier, tensor, version) in enumerate(self.tensors):
            if tensor._version != version:
                written.append(earlier)
                self.tensors[index] = (earlier, tensor, tensor._version)
        if written:
            self.writes[node] = tuple(written)
        if isinstance(result, torch.Tensor):
            self.tensors.append((node, result, result._version))
        return result


def _writes(gm: fx.GraphModule, example_shape: Shape) -> dict[fx.Node, tuple[fx.Node, ...]]:
    """For each node that writes in place, the earlier nodes whose tensors it changed (see
    :class:`_WriteProbe`). Where the fake run fails, each op that declares a write (``inplace``,
    a trailing ``_``, an ATen schema's write annotation) is taken to write its first argument."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    modules = dict(gm.named_modules())
    if not any(_may_write(node, modules) for node in gm.graph.nodes):
        return {}  # the fake run costs a few tenths of a second: only where a write can be
    try:
        with FakeTensorMode(allow_non_fake_inputs=True) as mode:
            probe = _WriteProbe(gm, mode)
            probe.run(torch.zeros(example_shape))
        return probe.writes
    except Exception:  # noqa: BLE001  (an op fake tensors cannot run: declared writes instead)
        return {node: (node.args[0],) for node in gm.graph.nodes
                if node.op in ("call_function", "call_method", "call_module")
                and _mutates_first_argument(node, modules) and isinstance(node.args[0], fx.Node)}


def _may_write(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether ``node`` could write into a tensor: it declares a write (``inplace``, a trailing
    ``_``, an ATen schema's write annotation), it is an augmented or item assignment, or it is
    an op this frontend does not know (which may do anything; it is refused later anyway)."""
    if node.op == "call_method":
        return node.target.endswith("_") or node.target not in METHOD_CONVERTERS
    if node.op == "call_module":
        module = modules.get(node.target)
        return _module_converter(module) is None or bool(getattr(module, "inplace", False))
    if node.op != "call_function":
        return False
    if _mutates_first_argument(node, modules) or node.target not in CONVERTERS:
        return True
    return _target_name(node.target).split(".")[-1].endswith("_")


def _shape_of(lw: FxLowering, value: Any) -> Shape:
    return lw.shape(value.data if isinstance(value, Padded) else value)


def _fetch_attr(gm: fx.GraphModule, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj.detach().clone() if isinstance(obj, torch.Tensor) else obj


def _per_channel(lw: FxLowering, value: Any, shape: Shape, what: str) -> torch.Tensor | None:
    vec = per_channel_vector(value, shape)
    if vec is None:
        lw.unsupported(
            f"{what} with a constant of shape {tuple(as_tensor(value).shape)}",
            f"only scalars and per-channel constants broadcast over data of shape {shape} are supported",
        )
    return vec


# ---- converters ---------------------------------------------------------------------------
def _conv(lw, x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    x, padding = take_padding(lw, x, padding)
    if isinstance(padding, str):
        k = as_tensor(weight).shape[2:]
        if padding == "valid":
            padding = 0
        elif padding == "same" and all(n % 2 == 1 for n in k):
            d = (dilation, dilation) if isinstance(dilation, int) else dilation
            padding = tuple(d[i] * (k[i] - 1) // 2 for i in range(2))
        else:
            return lw.unsupported(f"conv2d padding={padding!r}", "use explicit integer padding")
    op = Conv2d(
        weight=as_tensor(weight),
        bias=None if bias is None else as_tensor(bias),
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
    )
    return lw.emit(op, [x])


def _conv_module(lw, m: nn.Conv2d, x):
    if m.padding_mode != "zeros":
        return lw.unsupported(f"Conv2d padding_mode={m.padding_mode!r}", "use zero padding")
    return _conv(lw, x, m.weight, m.bias, m.stride, m.padding, m.dilation, m.groups)


def _convolution(lw, x, weight, bias, stride, padding, dilation, transposed, output_padding,
                 groups):
    """Core ATen's ``convolution`` (what ``run_decompositions`` turns conv2d into)."""
    if transposed:
        return lw.unsupported("transposed convolution", "use a regular (strided) convolution")
    return _conv(lw, x, weight, bias, stride, padding, dilation, groups)


def _addmm(lw, bias, x, weight_t, beta=1, alpha=1):
    """Core ATen's ``addmm(bias, x, W.T)``: a linear layer."""
    if not isinstance(x, Data) or isinstance(weight_t, Data):
        return lw.unsupported("addmm of two data tensors", "only x @ W with constant W is supported")
    weight = as_tensor(weight_t).t() * alpha
    return _linear(lw, x, weight, None if bias is None else as_tensor(bias) * beta)


def _mm(lw, x, weight_t):
    return _addmm(lw, None, x, weight_t)


def _pad(lw, x, pad, mode="constant", value=None):
    pads = [int(p) for p in pad]
    if mode != "constant" or (value not in (None, 0, 0.0)) or len(pads) != 4 or min(pads) < 0:
        return lw.unsupported(f"pad {pads} mode={mode!r} value={value!r}",
                              "only zero padding of the two spatial dims is supported")
    if isinstance(x, Padded):
        pads = [a + b for a, b in zip(pads, x.pads)]
        x = x.data
    return Padded(x, tuple(pads))


def _constant_pad(lw, x, pad, value=0):
    return _pad(lw, x, pad, "constant", value)


def _linear(lw, x, weight, bias=None):
    return lw.emit(Linear(weight=as_tensor(weight), bias=None if bias is None else as_tensor(bias)), [x])


def _batchnorm(lw, x, weight, bias, mean, var, training=False, momentum=0.1, eps=1e-5, *_):
    if training:
        return lw.unsupported(
            "batch_norm in training mode", "call model.eval() before tracing or exporting it"
        )
    op = BatchNorm(
        running_mean=as_tensor(mean),
        running_var=as_tensor(var),
        weight=None if weight is None else as_tensor(weight),
        bias=None if bias is None else as_tensor(bias),
        eps=float(eps),
    )
    return lw.emit(op, [x])


def _batchnorm_module(lw, m: nn.modules.batchnorm._BatchNorm, x):
    if m.running_mean is None:
        return lw.unsupported(
            f"{type(m).__name__} without running statistics", "use track_running_stats=True"
        )
    return _batchnorm(lw, x, m.weight, m.bias, m.running_mean, m.running_var, False, 0, m.eps)


def _relu(lw, x, *_, **__):
    return lw.emit(ReLU(), [x])


def _floor(lw, x, *_, **__):
    return lw.emit(Floor(), [x])


def _clamp(lw, x, min=None, max=None):
    return clipped_relu(lw, x, min, max, "clamp")


def _clamp_min(lw, x, min):
    return clipped_relu(lw, x, min, None, "clamp_min")


def _hardtanh(lw, x, min_val=-1.0, max_val=1.0, inplace=False):
    return clipped_relu(lw, x, min_val, max_val, "hardtanh")


def _relu6(lw, x, inplace=False):
    return clipped_relu(lw, x, 0.0, 6.0, "relu6")


def _identity(lw, x, *_, **__):
    return x


def _dropout(lw, x, p=0.5, training=False, inplace=False):
    """Dropout at inference: the identity. Dropout that stays on (``training=True`` in the code, as
    for Monte-Carlo dropout) is random, which no SNN here computes: refused."""
    if training is True:
        return lw.unsupported("dropout with training=True (random at inference)",
                              "pass training=self.training, or drop it")
    return x


def _avgpool(lw, x, kernel, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
             divisor_override=None):
    if isinstance(x, Padded):  # padded zeros are values: they count in the average
        kernel2 = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)
        pads = x.symmetric()
        foldable = pads is not None and (count_include_pad or padding in (0, (0, 0), [0, 0]))
        base = (padding, padding) if isinstance(padding, int) else tuple(padding)
        if foldable and all(p + b <= k // 2 for p, b, k in zip(pads, base, kernel2)):
            x, padding = take_padding(lw, x, padding)  # torch pools pad at most half a window
            count_include_pad = True
        else:
            x = materialize(lw, x)
    if ceil_mode or divisor_override is not None:
        return lw.unsupported(
            "avg_pool2d with ceil_mode or divisor_override", "use the torch defaults for both"
        )
    stride = kernel if stride in (None, [], ()) else stride
    return lw.emit(AvgPool2d(kernel, stride, padding, bool(count_include_pad)), [x])


def _avgpool_module(lw, m: nn.AvgPool2d, x):
    return _avgpool(lw, x, m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad,
                    m.divisor_override)


def _adaptive_avgpool(lw, x, output_size):
    _, h, w = lw.shape(x)
    out = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    out = tuple(size if o is None else o for o, size in zip(out, (h, w)))
    if h % out[0] or w % out[1]:
        return lw.unsupported(
            f"adaptive_avg_pool2d from {h}x{w} to {out[0]}x{out[1]}",
            "the input size must be a multiple of the output size",
        )
    kernel = (h // out[0], w // out[1])
    return lw.emit(AvgPool2d(kernel, kernel, 0, True), [x])


def _mean(lw, x, dim=None, keepdim=False, *, dtype=None):
    shape = lw.shape(x)
    dims = sorted(d % (len(shape) + 1) for d in ([dim] if isinstance(dim, int) else dim or []))
    if len(shape) != 3 or dims != [2, 3]:
        return lw.unsupported(f"mean over dims {dim}", "only global spatial mean (dims 2, 3) is supported")
    pooled = lw.emit(AvgPool2d(shape[1:], shape[1:], 0, True), [x])
    return pooled if keepdim else lw.emit(Flatten(), [pooled])


def _flatten_fn(lw, x, start_dim=0, end_dim=-1):
    ndim = len(lw.shape(x)) + 1
    if start_dim % ndim != 1 or end_dim % ndim != ndim - 1:
        return lw.unsupported(
            f"flatten(start_dim={start_dim}, end_dim={end_dim})", "flatten all but the batch dim"
        )
    return lw.emit(Flatten(), [x]) if ndim > 2 else x


def _flatten_module(lw, m: nn.Flatten, x):
    return _flatten_fn(lw, x, m.start_dim, m.end_dim)


def _reshape(lw, x, *shape):
    if len(shape) == 1 and isinstance(shape[0], (list, tuple)):
        shape = tuple(shape[0])
    data_shape = lw.shape(x)
    rest = list(shape[1:])
    if rest == list(data_shape):
        return x
    if rest in ([-1], [math.prod(data_shape)]):
        return lw.emit(Flatten(), [x]) if len(data_shape) > 1 else x
    return lw.unsupported(
        f"reshape of {data_shape} to {list(shape)}", "only flattening all but the batch dim is supported"
    )


def _mutates_first_argument(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether ``node`` writes its result into its first argument (``relu(x, inplace=True)``,
    ``x.add_(y)``, ``nn.ReLU(inplace=True)``, ATen's ``add_`` ...)."""
    if not node.args:
        return False
    if node.op == "call_module":
        return bool(getattr(modules.get(node.target), "inplace", False))
    if node.op == "call_method":
        return node.target.endswith("_") and not node.target.startswith("_")
    if node.kwargs.get("inplace") is True:
        return True
    schema = getattr(node.target, "_schema", None)
    if schema is not None and schema.arguments and schema.arguments[0].alias_info is not None:
        return bool(schema.arguments[0].alias_info.is_write)
    return node.target in (torch.relu_,)


def _takes_padding(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether ``node`` can take a pending zero pad over: a convolution, pooling or another pad."""
    if node.op == "call_module":
        return isinstance(modules.get(node.target), (nn.Conv2d, nn.AvgPool2d))
    return CONVERTERS.get(node.target) in (_conv, _convolution, _avgpool, _pad, _constant_pad)


def _sym_size(lw, x, dim):
    """``aten.sym_size.int``: the batch size (symbolic) or a fixed dim of the data."""
    return BATCH if dim == 0 else _size(lw, x, dim)


def _size(lw, x, dim=None):
    if dim == 0:
        return BATCH
    return lw.unsupported("Tensor.size() of a non-batch dim", "use fixed sizes in the model")


def _getattr(lw, x, name):
    if name == "shape":
        return (BATCH, *lw.shape(x))
    return lw.unsupported(f"getattr(tensor, {name!r})")


def _getitem(lw, value, index):
    if isinstance(value, tuple):
        return value[index]
    return lw.unsupported("indexing a tensor", "remove slicing from the forward pass")


def _add(lw, a, b, alpha=1):
    if isinstance(a, Data) and isinstance(b, Data):
        if alpha != 1:
            b = _scale(lw, b, alpha)
        if lw.shape(a) != lw.shape(b):
            return lw.unsupported(f"add of shapes {lw.shape(a)} and {lw.shape(b)}", "shapes must match")
        return lw.emit(Sum(), [a, b])
    x, c = (a, b) if isinstance(a, Data) else (b, a)
    bias = _per_channel(lw, c, lw.shape(x), "add")
    if bias is None:
        return UNSUPPORTED
    return lw.emit(Scale(scale=torch.ones(1), bias=bias * alpha), [x])


def _sub(lw, a, b, alpha=1):
    if isinstance(b, Data):
        b = _scale(lw, b, -1.0)
        return _add(lw, a, b, alpha)
    return _add(lw, a, -as_tensor(b), alpha)


def _rsub(lw, a, b, alpha=1):
    return _sub(lw, b, a, alpha)


def _scale(lw, x, c):
    scale = _per_channel(lw, c, lw.shape(x), "mul")
    return UNSUPPORTED if scale is None else lw.emit(Scale(scale=scale), [x])


def _mul(lw, a, b):
    if isinstance(a, Data) and isinstance(b, Data):
        return lw.unsupported("multiplication of two data tensors", "spiking layers cannot multiply activations")
    x, c = (a, b) if isinstance(a, Data) else (b, a)
    return _scale(lw, x, c)


def _div(lw, a, b, rounding_mode=None):
    if not isinstance(a, Data) or isinstance(b, Data) or rounding_mode is not None:
        return lw.unsupported("division by a data tensor", "only division by constants is supported")
    return _scale(lw, a, 1.0 / as_tensor(b))


def _bn_legit(lw, x, weight, bias, mean, var, momentum, eps):
    return (_batchnorm(lw, x, weight, bias, mean, var, False, momentum, eps), None, None)


Converter = Callable[..., Any]

CONVERTERS: dict[Any, Converter] = {
    F.relu: _relu, torch.relu: _relu, aten.relu.default: _relu, aten.relu_.default: _relu,
    torch.floor: _floor, aten.floor.default: _floor, aten.floor_.default: _floor,
    torch.clamp: _clamp, torch.clip: _clamp, torch.clamp_: _clamp, torch.clip_: _clamp,
    aten.clamp.default: _clamp, aten.clamp.Tensor: _clamp, aten.clamp_.default: _clamp,
    aten.clamp_.Tensor: _clamp, aten.clip.default: _clamp, aten.clip.Tensor: _clamp,
    aten.clip_.default: _clamp, aten.clip_.Tensor: _clamp, torch.clamp_min: _clamp_min,
    aten.clamp_min.default: _clamp_min, aten.clamp_min.Tensor: _clamp_min,
    F.hardtanh: _hardtanh, aten.hardtanh.default: _hardtanh, aten.hardtanh_.default: _hardtanh,
    F.relu6: _relu6, aten.relu6.default: _relu6, aten.relu6_.default: _relu6,
    F.conv2d: _conv, aten.conv2d.default: _conv,
    F.linear: _linear, aten.linear.default: _linear,
    F.batch_norm: lambda lw, x, mean, var, weight=None, bias=None, training=False, momentum=0.1,
    eps=1e-5: _batchnorm(lw, x, weight, bias, mean, var, training, momentum, eps),
    aten.batch_norm.default: _batchnorm,
    aten._native_batch_norm_legit_no_training.default: _bn_legit,
    F.avg_pool2d: _avgpool, aten.avg_pool2d.default: _avgpool,
    F.adaptive_avg_pool2d: _adaptive_avgpool, aten.adaptive_avg_pool2d.default: _adaptive_avgpool,
    aten._adaptive_avg_pool2d.default: _adaptive_avgpool,
    torch.mean: _mean, aten.mean.dim: _mean,
    torch.flatten: _flatten_fn, aten.flatten.using_ints: _flatten_fn,
    aten.view.default: _reshape, aten.reshape.default: _reshape, aten._unsafe_view.default: _reshape,
    torch.reshape: _reshape,
    operator.add: _add, torch.add: _add, aten.add.Tensor: _add,
    aten.convolution.default: _convolution, aten.addmm.default: _addmm, aten.mm.default: _mm,
    F.pad: _pad, aten.pad.default: _pad, aten.constant_pad_nd.default: _constant_pad,
    aten.sym_size.int: _sym_size,
    torch.relu_: _relu, aten.add_.Tensor: _add, aten.sub_.Tensor: _sub, aten.mul_.Tensor: _mul,
    aten.div_.Tensor: _div,
    operator.sub: _sub, torch.sub: _sub, aten.sub.Tensor: _sub, aten.rsub.Scalar: _rsub,
    operator.mul: _mul, torch.mul: _mul, aten.mul.Tensor: _mul,
    operator.truediv: _div, torch.div: _div, aten.div.Tensor: _div,
    operator.getitem: _getitem, getattr: _getattr,
    F.dropout: _dropout, F.dropout1d: _dropout, F.dropout2d: _dropout,
    aten.dropout.default: _dropout, aten.feature_dropout.default: _dropout,
    aten.clone.default: _identity,
    aten.alias.default: _identity, aten.detach.default: _identity,
    aten.contiguous.default: _identity,
}

METHOD_CONVERTERS: dict[str, Converter] = {
    "relu": _relu, "floor": _floor, "floor_": _floor, "view": _reshape, "reshape": _reshape, "flatten": _flatten_fn,
    "relu_": _relu, "add_": _add, "sub_": _sub, "mul_": _mul, "div_": _div,
    "add": _add, "sub": _sub, "mul": _mul, "div": _div,
    "clamp": _clamp, "clip": _clamp, "clamp_": _clamp, "clip_": _clamp, "clamp_min": _clamp_min,
    "clamp_min_": _clamp_min,
    "size": _size, "mean": _mean, "contiguous": _identity, "clone": _identity,
}

MODULE_CONVERTERS: dict[type, Converter] = {
    nn.Conv2d: _conv_module,
    nn.Linear: lambda lw, m, x: _linear(lw, x, m.weight, m.bias),
    nn.BatchNorm1d: _batchnorm_module,
    nn.BatchNorm2d: _batchnorm_module,
    nn.ReLU: lambda lw, m, x: _relu(lw, x),
    nn.Hardtanh: lambda lw, m, x: _hardtanh(lw, x, m.min_val, m.max_val),  # also nn.ReLU6
    nn.AvgPool2d: _avgpool_module,
    nn.AdaptiveAvgPool2d: lambda lw, m, x: _adaptive_avgpool(lw, x, m.output_size),
    nn.Flatten: _flatten_module,
    nn.Dropout: lambda lw, m, x: x,
    nn.Dropout2d: lambda lw, m, x: x,
    nn.Identity: lambda lw, m, x: x,
}
CONVERTERS.update(MODULE_CONVERTERS)  # so that error messages list module names too


def _module_converter(module: nn.Module) -> Converter | None:
    for cls in type(module).__mro__:
        if cls in MODULE_CONVERTERS:
            return MODULE_CONVERTERS[cls]
    return None


def lower_fx(gm: fx.GraphModule, input_shape: Shape, name: str = "model",
             example_shape: Shape | None = None) -> Graph:
    """Lower ``gm`` (one tensor input of batch-less ``input_shape``, one logits output) into the IR.
    ``example_shape`` (batch dim included; ``(2, *input_shape)`` by default) is the input on which
    the graph is traced, on fake tensors, for in-place writes."""
    return FxLowering(gm, input_shape, name, example_shape).run()


def source_ops() -> list[str]:
    """The torch functions, ATen ops, tensor methods and modules this frontend lowers."""
    return sorted({_target_name(t) for t in CONVERTERS} | {f"Tensor.{m}()" for m in METHOD_CONVERTERS}
                  | {m.__name__ for m in MODULE_CONVERTERS})
