"""Energy of a network: an estimate from operation counts, and (on CUDA) a measurement through NVML.

The estimate charges every multiply-accumulate (MAC) and every accumulate (AC, one SynOp) a fixed
energy. Defaults are 45 nm CMOS figures (Horowitz, ISSCC 2014): fp32 MAC 4.6 pJ (mult 3.7 + add
0.9), fp32 add 0.9 pJ; the ``int8`` preset uses int8 mult 0.2 + add 0.03 = 0.23 pJ per MAC and 0.03 pJ
per AC. An optional memory term charges every synaptic event (SynOp or MAC) one weight fetch.

    E_ANN = e_MAC * MACs (+ e_mem * MACs)
    E_SNN = e_MAC * MACs_analog + e_AC * SynOps (+ e_mem * (MACs_analog + SynOps))

``MACs_analog`` is the work of layers fed by analog values (the first layer under direct encoding),
counted once per time step (the headline) or once per sample. These are estimates of the arithmetic
of a hypothetical chip, not of this runtime; :func:`measure_gpu_energy` measures the GPU running the
simulation, which is a different quantity.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from spikeshield.compiler.ir.errors import ConfigError


@dataclass(frozen=True)
class EnergyModel:
    """Energy per operation, in picojoules."""

    name: str = "fp32"
    mac_pj: float = 4.6
    ac_pj: float = 0.9
    memory_pj: float | None = None  # per synaptic event; None leaves memory out
    source: str = "Horowitz, ISSCC 2014, 45 nm CMOS"

    def validate(self) -> EnergyModel:
        constants = {"MAC": self.mac_pj, "accumulate": self.ac_pj}
        if self.memory_pj is not None:
            constants["memory access"] = self.memory_pj
        for what, value in constants.items():
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not number or not math.isfinite(value) or not value > 0:
                raise ConfigError(
                    f"the {what} energy must be a positive number of picojoules, got {value!r}"
                )
        return self

    def ann_pj(self, macs: float) -> float:
        return macs * (self.mac_pj + (self.memory_pj or 0.0))

    def snn_pj(self, analog_macs: float, synops: float) -> float:
        memory = self.memory_pj or 0.0
        return analog_macs * (self.mac_pj + memory) + synops * (self.ac_pj + memory)

    def formula(self) -> str:
        mem = "" if self.memory_pj is None else f" + {self.memory_pj} pJ x (MACs + SynOps)"
        return (f"E_SNN = {self.mac_pj} pJ x MACs(analog input layers) + {self.ac_pj} pJ x SynOps"
                f"{mem}; E_ANN = {self.mac_pj} pJ x MACs"
                f"{'' if self.memory_pj is None else f' + {self.memory_pj} pJ x MACs'}"
                f" ({self.name}: {self.source})")

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "formula": self.formula()}


ENERGY_PRESETS = {
    "fp32": EnergyModel("fp32", 4.6, 0.9),
    "int8": EnergyModel("int8", 0.23, 0.03),
}


def energy_model(
    preset: str = "fp32",
    mac_pj: float | None = None,
    ac_pj: float | None = None,
    memory_pj: float | None = None,
) -> EnergyModel:
    """A preset (``fp32`` or ``int8``) with any constant overridden; validated."""
    if preset not in ENERGY_PRESETS:
        raise ConfigError(f"energy preset must be one of {', '.join(ENERGY_PRESETS)}, got {preset!r}")
    base = ENERGY_PRESETS[preset]
    changes = {k: v for k, v in {"mac_pj": mac_pj, "ac_pj": ac_pj, "memory_pj": memory_pj}.items()
               if v is not None}
    if changes:
        base = dataclasses.replace(base, name=f"{preset} (custom)", source="user constants", **changes)
    return base.validate()


def measure_gpu_energy(run: Callable[[], int], device: torch.device | str) -> dict[str, Any]:
    """Run ``run()`` (returns the samples it simulated) and read the GPU's total-energy counter
    before and after. The joules are the whole board's over the run, idle power included."""
    device = torch.device(device)
    if device.type != "cuda":
        return {"measured": False, "reason": f"device is {device.type}; NVML needs a CUDA GPU"}
    try:
        import pynvml
    except ImportError:
        return {"measured": False, "reason": "nvidia-ml-py (pynvml) is not installed"}
    try:
        pynvml.nvmlInit()
        index = device.index if device.index is not None else torch.cuda.current_device()
        uuid = str(torch.cuda.get_device_properties(index).uuid)
        handle = pynvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith("GPU-") else f"GPU-{uuid}")
        torch.cuda.synchronize(device)
        start_mj = pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
        started = time.perf_counter()
        samples = run()
        torch.cuda.synchronize(device)
        seconds = time.perf_counter() - started
        used_mj = pynvml.nvmlDeviceGetTotalEnergyConsumption(handle) - start_mj
        name = pynvml.nvmlDeviceGetName(handle)
    except pynvml.NVMLError as err:
        return {"measured": False, "reason": f"NVML: {err}"}
    finally:
        with contextlib.suppress(pynvml.NVMLError):  # after a failed init there is nothing to release
            pynvml.nvmlShutdown()
    joules = used_mj / 1000.0
    return {"measured": True, "device": name if isinstance(name, str) else name.decode(),
            "joules": joules, "seconds": seconds, "samples": samples,
            "joules_per_sample": joules / max(1, samples),
            "note": "measured: whole-board energy of the GPU simulating the SNN, idle included"}
