"""Multi-process runs on ``torch.distributed``: what ``torchrun --nproc_per_node N spikeshield ...`` uses.

A command started by ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) joins the process group
torchrun set up, with gloo on CPU and NCCL on CUDA (one GPU per process, ``LOCAL_RANK``). Then:

- training (ANN training, SNN finetuning) wraps the model in ``DistributedDataParallel`` and feeds
  each process its share of every epoch through ``DistributedSampler``; the per-process batch is
  the configured batch divided by the number of processes, so the global batch, the number of steps
  and the schedule are those of a single process;
- attack ensembles split the test samples into fixed chunks of one batch, deal the chunks out to
  the processes and add up the per-sample results, so the counts equal a single process's exactly;
- only rank 0 prints and writes files.

Without torchrun everything here is a no-op: one process, rank 0 of 1.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from spikeshield.compiler.ir.errors import ConfigError


@dataclass(frozen=True)
class World:
    """This process's place among the processes of one run."""

    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def owns(self, chunk: int) -> bool:
        """Chunks are dealt round-robin: chunk ``c`` belongs to rank ``c % size``."""
        return chunk % self.size == self.rank


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def world() -> World:
    """The current process group, or a single process if none was joined."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World()


def local_device(device: torch.device) -> torch.device:
    """Under torchrun each process drives its own GPU (``cuda:LOCAL_RANK``); CPU stays CPU."""
    if device.type == "cuda" and launched_by_torchrun():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[World]:
    """Join torchrun's process group for the block (gloo on CPU, NCCL on CUDA), then leave it."""
    if not launched_by_torchrun() or dist.is_initialized():
        yield world()
        return
    if device.type == "cuda":
        torch.cuda.set_device(local_device(device))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield world()
    finally:
        dist.destroy_process_group()


def sum_over_processes(tensor: torch.Tensor, current: World) -> torch.Tensor:
    """``tensor`` summed over all processes (in place); a single process returns it unchanged."""
    if current.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier(current: World) -> None:
    if current.distributed:
        dist.barrier()


def data_parallel(module: nn.Module, device: torch.device, current: World) -> nn.Module:
    """``module`` wrapped in ``DistributedDataParallel`` when there are several processes."""
    if not current.distributed:
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = None
    if device.type == "cuda":
        ids = [device.index if device.index is not None else torch.cuda.current_device()]
    return DistributedDataParallel(module, device_ids=ids)


def broadcast_buffers(module: nn.Module, current: World) -> None:
    """Give every process rank 0's buffers (BatchNorm running statistics)."""
    if current.distributed:
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def per_process_batch(batch_size: int, current: World) -> int:
    """This process's share of a global batch; an error if there are more processes than samples."""
    if batch_size < current.size:
        raise ConfigError(
            f"a batch of {batch_size} cannot be shared by {current.size} processes; use --nproc "
            f"{batch_size} or fewer, or a larger --batch-size"
        )
    return batch_size // current.size


def check_nproc(nproc: int) -> None:
    if nproc < 1:
        raise ConfigError(f"--nproc must be at least 1, got {nproc}")


def check_processes(nproc: int, work_units: int, what: str) -> None:
    """One-line error if ``nproc`` processes cannot all get work (``work_units`` of ``what``)."""
    check_nproc(nproc)
    if nproc > work_units:
        raise ConfigError(
            f"--nproc {nproc} is more processes than the data allows: only {work_units} {what}; "
            f"use --nproc {max(1, work_units)} or fewer"
        )


def run_under_torchrun(nproc: int, module: str, args: list[str]) -> int:
    """``torchrun --standalone --nproc_per_node nproc -m module args``, through torch's own launcher;
    returns the exit status (a failed worker's own status, e.g. 2 for a user error)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser
    from torch.distributed.run import run as torchrun

    # The launcher's parser gets only the launcher's options: given the command's options too, it
    # takes --n for an abbreviation of its own --nnodes.
    launcher = get_args_parser().parse_args(
        ["--standalone", f"--nproc_per_node={nproc}", "-m", module]
    )
    launcher.training_script_args = args
    try:
        torchrun(launcher)
    except ChildFailedError as failed:
        codes = [f.exitcode for f in failed.failures.values()]
        return next((c for c in codes if c > 0), 1)
    return 0
