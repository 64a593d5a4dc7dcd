"""Resumable long jobs: periodic checkpoints, and a clean stop on SIGINT / SIGTERM.

A :class:`Checkpoint` is a directory beside a job's output (``<out>.checkpoint`` by default). It
holds ``job.json`` (which command, and the settings that decide its numbers) and one file per part
of the job (``train.pt``, ``finetune.pt``, ``snn_ensemble.pt`` ...). Each part file is written
atomically and holds only tensors, numbers, strings and containers of them, so it is read back with
``torch.load(weights_only=True)``: a checkpoint cannot run code when loaded. ``job.json`` also
records the SHA-256 of every part file written and of the samples the job uses
(:meth:`Checkpoint.bind_data`): :meth:`Checkpoint.discard` deletes only files whose bytes still
match, and a resume on other samples is refused.

A loop that can resume calls :meth:`Checkpoint.step` at each step boundary with a function that
returns its state. That writes the state every ``every`` seconds and, once a stop was requested
(:func:`stop_on_signals`), writes it one last time and raises :class:`Interrupted`. The state holds
the model, optimiser, scheduler, the RNG states and the position in the data, so a resumed run
continues with exactly the numbers the uninterrupted one would have produced (one process, CPU).

A signal that arrives while no such loop runs (loading, conversion, a report being written) stops
the job at once; the last checkpoint written stays valid. A step that does not end within
``SPIKESHIELD_STOP_GRACE_SECONDS`` (default 20) of the signal (a strong attack on a chunk of
images, a long validation) is cut short: the job stops at once, as on a second signal, and a loop
that knows a consistent state at that point (the attack ensemble: every chunk done so far; the
epoch loop: the epoch being scored) writes it first, so a first SIGTERM is honoured within the
grace period plus the time of that write.
"""

from __future__ import annotations

import _thread
import contextlib
import json
import os
import re
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from spikeshield.compiler.ir.atomic import atomic_file
from spikeshield.compiler.ir.digests import file_sha256
from spikeshield.compiler.ir.errors import ConfigError, ModelLoadError
from spikeshield.compiler.ir.limits import read_json_file
from spikeshield.runtime.distributed import world

FORMAT = "spikeshield-checkpoint"
FORMAT_VERSION = 1
DEFAULT_EVERY_SECONDS = 300.0
STOP_GRACE_VARIABLE = "SPIKESHIELD_STOP_GRACE_SECONDS"
DEFAULT_STOP_GRACE = 20.0


class Interrupted(BaseException):
    """The job stopped on a signal; ``exit_code`` is the shell's 128 + signal number. A
    BaseException, like KeyboardInterrupt, so that no ``except Exception`` on the way (a loader
    turning its failures into "bad file") can swallow it."""

    def __init__(self, message: str, signum: int, forced: bool = False) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum
        self.forced = forced  # cut short mid-step: a loop may still save the state it knows


class _Signals:
    """Process-wide stop state; the handlers only set a flag while a resumable loop listens."""

    requested: int | None = None
    listening: int = 0
    forced: bool = False  # the grace period ran out before a step boundary honoured the stop
    watchdog: threading.Timer | None = None


def stop_grace() -> float:
    """Seconds a requested stop waits for the current step to end (``SPIKESHIELD_STOP_GRACE_SECONDS``)."""
    from spikeshield.runtime.progress import env_seconds

    return env_seconds(STOP_GRACE_VARIABLE, DEFAULT_STOP_GRACE, zero_allowed=False)


def _handle(signum: int, frame: Any) -> None:
    name = signal.Signals(signum).name
    if _Signals.listening and _Signals.requested is None:
        _Signals.requested = signum
        grace = stop_grace()
        print(f"\n{name}: stopping after the current step (at most {grace:g} s) and writing a "
              "checkpoint (send it again to stop at once)", file=sys.stderr, flush=True)
        _Signals.watchdog = threading.Timer(grace, _cut_short, args=(signum,))
        _Signals.watchdog.daemon = True
        _Signals.watchdog.start()
        return
    _Signals.requested = signum
    _cancel_watchdog()
    if _Signals.forced:
        raise Interrupted(f"stopped by {name}: the current step had not ended {stop_grace():g} s "
                          "after it", signum, forced=True)
    raise Interrupted(f"stopped by {name}", signum)


def _cut_short(signum: int) -> None:
    """The watchdog: the stop requested ``grace`` seconds ago is still pending; stop at once."""
    if _Signals.requested is not None and _Signals.listening:
        _Signals.forced = True
        _thread.interrupt_main(signum)  # runs _handle in the main thread, between two bytecodes


def _cancel_watchdog() -> None:
    if _Signals.watchdog is not None:
        _Signals.watchdog.cancel()
        _Signals.watchdog = None


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Turn SIGINT and SIGTERM into a clean stop for the block (main thread only; elsewhere a
    no-op)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _handle) for s in (signal.SIGINT, signal.SIGTERM)}
    _Signals.requested = None
    try:
        yield
    finally:
        _cancel_watchdog()
        for s, handler in previous.items():
            signal.signal(s, handler)
        _Signals.requested, _Signals.forced = None, False


def request_stop(signum: int = signal.SIGTERM) -> None:
    """Ask the running loop to checkpoint and stop at its next step boundary, as a signal does."""
    _Signals.requested = signum


class Checkpoint:
    """A job's checkpoint directory. ``settings`` (JSON-able) are the options that decide the job's
    numbers; resuming with different ones is refused, naming the options that differ."""

    def __init__(
        self,
        directory: str | os.PathLike,
        job: str,
        settings: dict[str, Any],
        every: float = DEFAULT_EVERY_SECONDS,
        resume: bool = False,
    ) -> None:
        if every < 0:
            raise ConfigError(f"--checkpoint-every must be >= 0 seconds, got {every}")
        self.directory = Path(directory)
        self.job = job
        self.settings = json.loads(json.dumps(settings, default=str))
        self.every = every
        self.resumed = resume
        self.job_id = uuid.uuid4().hex  # replaced by the recorded one when resuming
        self._last_save = time.monotonic()
        # What this checkpoint wrote, by file name: SHA-256 of the bytes. Only files whose bytes
        # still match are ever deleted (discard), so a folder of the same name is never lost.
        self._written: dict[str, str] = {}
        self._recorded_data: str | None = None
        self._created = not self.directory.exists()
        if resume:
            self._check_matches()
        elif world().is_main and self.directory.exists():
            if (self.directory / "job.json").is_file():
                raise ConfigError(
                    f"{self.directory} holds the checkpoint of an interrupted run; add --resume "
                    f"{self.directory} to continue it, or delete it to start afresh"
                )
            if not self.directory.is_dir() or any(self.directory.iterdir()):
                raise ConfigError(
                    f"{self.directory} exists and is not a spikeshield checkpoint, and this run "
                    "keeps its checkpoint there; move it away or choose another output"
                )

    def bind_data(self, digest: str) -> None:
        """Record the digest of the samples the job uses (e.g. :meth:`DataSplits.digest`); when
        resuming, refuse samples other than the interrupted run's, so that counts made on two data
        sets are never mixed under one spec."""
        recorded = self._recorded_data
        if self.resumed and recorded is not None and recorded != digest:
            raise ConfigError(
                f"checkpoint {self.directory} was made on other data: the samples behind the data "
                "spec changed since the interrupted run (SHA-256 differs); restore them, or drop "
                "--resume to start afresh"
            )
        self.settings["data_sha256"] = digest

    @property
    def command_hint(self) -> str:
        return f"--resume {self.directory}"

    def _check_matches(self) -> None:
        info = self.directory / "job.json"
        if not info.is_file():
            raise ConfigError(
                f"no checkpoint at {self.directory} (job.json missing); pass the directory an "
                "interrupted run named, or drop --resume to start afresh"
            )
        try:
            recorded = read_json_file(info)
        except ModelLoadError as err:
            raise ModelLoadError(f"{err}; it is not a readable checkpoint description") from None
        if not isinstance(recorded, dict) or recorded.get("format") != FORMAT or \
                recorded.get("version") != FORMAT_VERSION:
            raise ModelLoadError(
                f"{info} is not a spikeshield checkpoint of format {FORMAT_VERSION}"
            )
        if not isinstance(recorded.get("settings"), dict) or not isinstance(
                recorded.get("job_id"), str):
            raise ModelLoadError(f"{info} is damaged (no settings or job id); drop --resume to "
                                 "start afresh")
        self.job_id = recorded["job_id"]
        written = recorded.get("written", {})
        if isinstance(written, dict):
            self._written = {str(k): v for k, v in written.items()
                             if isinstance(v, str) and _PART_NAME.fullmatch(str(k))}
        if recorded.get("job") != self.job:
            raise ConfigError(
                f"{self.directory} is a checkpoint of `spikeshield {recorded.get('job')}`, not of "
                f"`spikeshield {self.job}`"
            )
        old = dict(recorded.get("settings", {}))
        self._recorded_data = old.pop("data_sha256", None)
        keys = set(old) | set(self.settings)
        differing = sorted(k for k in keys if old.get(k) != self.settings.get(k))
        if differing:
            shown = ", ".join(
                f"{k}={old.get(k)!r} (now {self.settings.get(k)!r})" for k in differing[:4]
            )
            raise ConfigError(
                f"checkpoint {self.directory} was made with other settings: {shown}; rerun the "
                "interrupted command unchanged with --resume, or drop --resume to start afresh"
            )

    def _path(self, part: str) -> Path:
        return self.directory / f"{part}.pt"

    def load(self, part: str, device: torch.device | str = "cpu") -> dict[str, Any] | None:
        """The saved state of ``part`` when resuming, None when there is none (start afresh)."""
        path = self._path(part)
        if not self.resumed or not path.is_file():
            return None
        try:
            state = torch.load(path, map_location=device, weights_only=True)
        except Exception as err:  # noqa: BLE001  (truncated, foreign or code-carrying: all refused)
            raise ModelLoadError(
                f"checkpoint file {path} is unreadable ({type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else ''}); drop --resume to start afresh"
            ) from None
        if not isinstance(state, dict) or state.pop("job_id", None) != self.job_id:
            raise ModelLoadError(
                f"checkpoint file {path} belongs to another job than {self.directory / 'job.json'} "
                "(two runs shared the directory); delete it and drop --resume to start afresh"
            )
        return state

    def save(self, part: str, state: dict[str, Any]) -> None:
        """Write ``state`` as ``part`` atomically (a crash mid-write keeps the previous file), and
        record its digest in ``job.json`` (what :meth:`discard` may delete)."""
        if not _PART_NAME.fullmatch(f"{part}.pt"):
            raise ValueError(f"checkpoint part {part!r} is not a plain file name")
        self.directory.mkdir(parents=True, exist_ok=True)
        with atomic_file(self._path(part)) as tmp:
            torch.save({**state, "job_id": self.job_id}, tmp)
            digest = file_sha256(tmp)
        self._written[self._path(part).name] = digest
        self._write_description()
        self._last_save = time.monotonic()

    def _write_description(self) -> None:
        description = {"format": FORMAT, "version": FORMAT_VERSION, "job": self.job,
                       "job_id": self.job_id, "settings": self.settings,
                       "written": dict(sorted(self._written.items()))}
        with atomic_file(self.directory / "job.json") as tmp:
            tmp.write_text(json.dumps(description, indent=2))

    def step(self, part: str, state: Callable[[], dict[str, Any]], where: str) -> None:
        """At a step boundary: save when due; on a requested stop, save and raise Interrupted."""
        signum = _Signals.requested
        if signum is not None:
            _cancel_watchdog()
            self.save(part, state())
            raise Interrupted(
                f"stopped by {signal.Signals(signum).name} {where}; checkpoint written to "
                f"{self.directory}; continue with the same command and {self.command_hint}",
                signum,
            )
        if time.monotonic() - self._last_save >= self.every:
            self.save(part, state())

    @contextlib.contextmanager
    def listening(self) -> Iterator[None]:
        """While the block runs, a signal waits for the next :meth:`step` instead of stopping
        at once."""
        _Signals.listening += 1
        try:
            yield
        finally:
            _Signals.listening -= 1
        signum = _Signals.requested
        if signum is not None and not _Signals.listening:
            # The signal came after the loop's last step boundary: stop now, do not go on.
            _cancel_watchdog()
            raise Interrupted(f"stopped by {signal.Signals(signum).name} after the last step",
                              signum)

    def discard(self) -> list[str]:
        """Once the job's output is written, delete the files this checkpoint wrote (those whose
        bytes still match the recorded digests), ``job.json``, and the directory if nothing else is
        left in it. Returns the names it kept (files spikeshield did not write), and says so."""
        if not self.directory.is_dir():
            return []
        kept = []
        for path in sorted(self.directory.iterdir()):
            ours = path.name in self._written and path.is_file() and not path.is_symlink() \
                and file_sha256(path) == self._written[path.name]
            if ours:
                path.unlink()
            elif path.name != "job.json":
                kept.append(path.name)
        if kept:
            print(f"note: kept {self.directory}: it holds files this run did not write "
                  f"({', '.join(kept[:5])}{', ...' if len(kept) > 5 else ''})", file=sys.stderr)
            return kept
        description = self.directory / "job.json"
        ours = self._created or description.is_file()
        description.unlink(missing_ok=True)
        if ours:  # a folder this run or the interrupted one made, now empty
            with contextlib.suppress(OSError):
                self.directory.rmdir()
        return kept


_PART_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}\.pt")


def rng_state() -> dict[str, Any]:
    """Every generator a job draws from (torch CPU and, when present, CUDA)."""
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def deferring_signals(checkpoint: Checkpoint | None) -> contextlib.AbstractContextManager:
    """``checkpoint.listening()``, or nothing when the job has no checkpoint."""
    return checkpoint.listening() if checkpoint is not None else contextlib.nullcontext()


def training_state(stateful: dict[str, Any], **progress: Any) -> dict[str, Any]:
    """A training loop's checkpoint: the state dicts of ``stateful`` (model, optimiser, scheduler),
    the RNG states, and the loop's own ``progress`` (epoch, batch, best so far ...)."""
    states = {k: v.state_dict() for k, v in stateful.items()}
    return {"state": states, "rng": rng_state(), **progress}


def restore_training(saved: dict[str, Any], stateful: dict[str, Any], epochs: int,
                     steps_per_epoch: int) -> None:
    """Load what :func:`training_state` saved back into ``stateful`` and the RNGs, after checking
    that its position lies inside this run (``epochs`` of ``steps_per_epoch`` batches): a
    tampered position would silently skip the rest of training, a weight of another shape would
    fail deep inside torch."""
    try:
        epoch, batches = saved["epoch"], saved["progress"]["batches"]
        for key, value in stateful.items():
            value.load_state_dict(saved["state"][key])
        restore_rng(saved["rng"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise ModelLoadError(f"the checkpoint does not fit this run ({type(err).__name__}: "
                             f"{str(err).splitlines()[0][:160] if str(err) else ''}); drop "
                             "--resume to start afresh") from None
    whole = isinstance(epoch, int) and isinstance(batches, int) and not isinstance(epoch, bool)
    if not whole or not 0 <= epoch <= epochs or not 0 <= batches <= steps_per_epoch:
        raise ModelLoadError(f"the checkpoint's position (epoch {epoch!r}, batch {batches!r}) lies "
                             f"outside this run's {epochs} epochs of {steps_per_epoch} batches; "
                             "drop --resume to start afresh")
