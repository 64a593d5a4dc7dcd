"""The portable NIR profile: the same SNN in the subset of NIR that SNN frameworks' importers read
correctly (``spikeshield export --format nir --nir-profile portable``).

What the importers handle, measured against the real packages (``tests/backends/test_nir_importers.py``):
SpikingJelly 2.0.0 reads ``Affine``, ``Linear``, ``Conv2d``, ``AvgPool2d``, ``Flatten`` and ``IF``
with one threshold per layer and ``r = 1 / dt``; Norse 1.1.0 reads ``Affine``, ``Linear``,
``Conv2d``, ``SumPool2d``, ``Flatten`` and ``IF``. Neither reads ``I``, ``Scale`` or ``Threshold``,
so the exact profile's integrator readout, reset-by-subtraction loop and scales do not load. The
portable graph is therefore written from an IR rewritten with the same meaning:

* the output layer feeds ``Output`` directly: the reader averages the per-step outputs over T
  (the exact profile integrates them in an ``I`` node);
* ``IF(r=1, v_reset=0)`` only: reset by subtraction and an initial potential are refused;
* one threshold per layer, as compiled (``--uniform-thresholds``, or ``--threshold-mode layer``):
  per-channel thresholds are refused. Dividing channel ``c``'s input current by ``theta_c`` here
  would give "the same spikes up to float rounding", and on deep nets the rounding flips neurons
  whose flips cascade (measured on a random-weight vgg11: logits 0.003 apart from the runtime's):
  not the SNN that was compiled. ``--uniform-thresholds`` does that division at compile time
  (pass ``uniform_thresholds``), so the compiled SNN is the divided one and the export is exact;
* average pooling and scales become convolutions (or affine maps) with diagonal weights, which
  every importer reads: ``1 / (kh * kw)`` on the diagonal is exact for power-of-two windows.
"""

from __future__ import annotations

import torch

from spikeshield.compiler.ir.graph import Graph
from spikeshield.compiler.ir.ops import IF, AvgPool2d, Conv2d, Linear, Scale

PROFILES = ("exact", "portable")

# How each consumer loads a portable file, as its documentation says, and what it then computes
# (measured by tests/backends/test_nir_importers.py, which runs the ``load`` code of SpikingJelly and
# Norse as written here). The code takes ``PATH`` (the .nir file), ``x`` (a float batch
# ``(N, *input shape)``) and ``T`` and leaves ``logits``; export writes this into the sidecar.
PORTABLE_LOADING: dict[str, dict[str, str]] = {
    "spikingjelly": {
        "load": "import nir\n"
                "from spikingjelly.activation_based.nir_exchange.from_nir import import_from_nir\n"
                "net = import_from_nir(nir.read(PATH), dt=1.0)\n"
                "state, total = None, 0\n"
                "for _ in range(T):\n"
                "    out, state = net(x, state)\n"
                "    total = total + out\n"
                "logits = total / T",
        "computes": "the runtime's logits, residual nets included; dt=1.0 must be passed (it "
                    "needs r == 1/dt and ignores the graph's dt)",
    },
    "norse": {
        "load": "import nir, torch, norse.torch\n"
                "net = norse.torch.from_nir(nir.read(PATH), dt=1.0)\n"
                "rows = []\n"
                "for sample in x:  # one unbatched sample at a time: Flatten(start_dim=0)\n"
                "    state, total = None, 0\n"
                "    for _ in range(T):\n"
                "        out, state = net(sample, state)\n"
                "        total = total + out\n"
                "    rows.append(total / T)\n"
                "logits = torch.stack(rows)",
        "computes": "the runtime's logits on feed-forward nets; on a residual net its output is "
                    "an inner layer's map (nirtorch runs the graph out of order): use "
                    "--format norse",
    },
    "snntorch": {
        "load": "import nir\nfrom snntorch.import_nir import import_from_nir\n"
                "net = import_from_nir(nir.read(PATH))",
        "computes": "other numbers: IF becomes Leaky(beta=0.9) with reset by subtraction; use "
                    "--format snntorch",
    },
    "sinabs": {
        "load": "import nir, sinabs\nnet = sinabs.from_nir(nir.read(PATH), batch_size=len(x))",
        "computes": "other numbers: IF becomes a multi-spike IAFSqueeze resetting by subtraction "
                    "with a floor at -threshold; use --format sinabs",
    },
    "snn-mlir": {
        "load": "snn-mlir check PATH && snn-mlir export PATH snn.mlir",
        "computes": "MLIR with one snn.lif per IF layer (decay 1, the layer's threshold, reset "
                    "to 0) for feed-forward nets; refuses residual graphs (linear chains only); "
                    "running it needs the project's snn-opt dialect tool, not on PyPI",
    },
    "spikeshield": {
        "load": "spikeshield run PATH",
        "computes": "the runtime's logits and every neuron's spike count",
    },
}


def portable_problems(graph: Graph) -> list[str]:
    """What the portable profile cannot express, one line per node, each with the way out."""
    problems = []
    for name in graph.nodes_of(IF):
        op = graph.op(name)
        if op.reset != "zero":
            problems.append(f"node {name!r} (if) resets by subtraction, which NIR importers load "
                            "wrongly or not at all: export --nir-profile exact, or recompile with "
                            "--reset zero --v-init 0")
        elif op.v_init:
            problems.append(f"node {name!r} (if) starts at v_init={op.v_init}, which NIR's IF "
                            "cannot hold: recompile with --v-init 0, or export a framework module")
        elif op.threshold.numel() > 1 and not bool((op.threshold == op.threshold.reshape(-1)[0])
                                                    .all()):
            problems.append(f"node {name!r} (if) has one threshold per channel, which the "
                            "importers read as one per layer: recompile with --uniform-thresholds "
                            "(folded into the weights at compile time) or --threshold-mode layer")
    for name in graph.nodes_of(AvgPool2d):
        op = graph.op(name)
        if any(op.padding) and not op.count_include_pad:
            problems.append(f"node {name!r} (avgpool2d) divides padded windows by their valid "
                            "size, which a fixed convolution cannot: pad without it")
    return problems


def _diagonal(channels_or_features: int, values: torch.Tensor, bias: torch.Tensor | None,
              ndim: int, kernel: tuple[int, int] = (1, 1), **conv) -> Conv2d | Linear:
    """A conv (``ndim == 3``) or linear layer whose output channel ``c`` is ``values[c]`` times input
    channel ``c`` (summed over the kernel window), zeros elsewhere."""
    n = channels_or_features
    diagonal = torch.diag(values.detach().float().reshape(-1).expand(n).clone())
    if ndim != 3:
        return Linear(diagonal, None if bias is None else bias.detach().float().expand(n).clone())
    weight = diagonal.reshape(n, n, 1, 1).expand(n, n, *kernel).clone()
    return Conv2d(weight, None if bias is None else bias.detach().float().expand(n).clone(),
                  **conv)


def portable_graph(graph: Graph) -> Graph:
    """A copy of ``graph`` rewritten into the portable subset (see the module docstring); the
    caller has checked :func:`portable_problems`."""
    graph = graph.copy()
    for name in graph.nodes_of(IF):  # one value, shaped as NIR's IF holds a layer's threshold
        op = graph.op(name)
        graph.set_op(name, op.replace(threshold=op.threshold.detach().reshape(-1)[:1].clone()))
    for name in graph.nodes_of(AvgPool2d):
        op = graph.op(name)
        channels = graph.in_shape(name)[0]
        window = torch.tensor(1.0 / (op.kernel[0] * op.kernel[1]))
        graph.set_op(name, _diagonal(channels, window, None, 3, tuple(op.kernel),
                                     stride=tuple(op.stride), padding=tuple(op.padding)))
    for name in graph.nodes_of(Scale):
        op = graph.op(name)
        shape = graph.shape(name)
        graph.set_op(name, _diagonal(shape[0], op.scale, op.bias, len(shape)))
    return graph.validate()
