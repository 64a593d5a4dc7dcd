"""Progress of long work, on a terminal and in a log file alike.

On a terminal (or in a notebook) this is a tqdm bar. When the output goes elsewhere (a log file,
``nohup``, a batch job), tqdm on its own says nothing until the work ends; here it writes one
plain line every ``SPIKESHIELD_PROGRESS_SECONDS`` seconds (default 30) while the work lasts and a
last line when it ends, and nothing at all for work shorter than that interval. The line comes even
when one step of the work outlasts the interval (an attack member on a chunk of images, a
validation): a heartbeat thread writes the bar's current line (elapsed time, and the postfix that
says which member or phase is running) whenever a bar has been silent for its interval.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
import weakref
from typing import Any

from tqdm.auto import tqdm as _auto_tqdm
from tqdm.autonotebook import tqdm as _chosen_tqdm  # tqdm.std's unless in a notebook
from tqdm.std import tqdm as _std_tqdm

from spikeshield.compiler.ir.errors import ConfigError

INTERVAL_VARIABLE = "SPIKESHIELD_PROGRESS_SECONDS"
DEFAULT_INTERVAL = 30.0


def env_seconds(variable: str, default: float, *, zero_allowed: bool) -> float:
    """A number of seconds from the environment variable ``variable`` (``default`` when unset);
    anything else than a finite number >= 0 (> 0 unless ``zero_allowed``) is refused by name."""
    text = os.environ.get(variable)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (math.isfinite(value) and (value >= 0 if zero_allowed else value > 0)):
        raise ConfigError(f"{variable} must be a number of seconds "
                          f"{'>= 0' if zero_allowed else '> 0'}, got {text!r}")
    return value


def _interval() -> float:
    return env_seconds(INTERVAL_VARIABLE, DEFAULT_INTERVAL, zero_allowed=True)


class _LineProgress(_std_tqdm):
    """tqdm that writes whole lines, at most one per interval, for streams that are not terminals."""

    _write_lock = threading.Lock()  # the heartbeat thread and the work's thread share the stream

    def __init__(self, *args: Any, every: float = DEFAULT_INTERVAL, **kwargs: Any) -> None:
        self._lines, self._every, self._last = 0, every, time.monotonic()
        self._closed = False
        super().__init__(*args, **kwargs)
        if every > 0 and not self.disable:
            _Heartbeat.watch(self)

    def display(self, msg: str | None = None, pos: int | None = None, force: bool = False) -> bool:
        # Every refresh comes here (updates, set_postfix): keep to one line per interval.
        with self._write_lock:
            now = time.monotonic()
            if self._closed or (not force and now - self._last < self._every):
                return True
            text = (self.__str__() if msg is None else msg).strip()
            if text:
                self.fp.write(text + "\n")
                self.fp.flush()
                self._lines += 1
                self._last = now
        return True

    def beat(self) -> None:
        """The heartbeat: write the current line when nothing was written for an interval."""
        if time.monotonic() - self._last >= self._every:
            self.display(force=True)

    def close(self) -> None:
        if not self.disable and self._lines:
            self.display(force=True)  # where it ended; work that never showed a line stays silent
        with self._write_lock:
            self._closed = True
            self.fp = _Quiet()  # tqdm's own close writes a carriage return to clear a terminal line
        super().close()


class _Heartbeat:
    """One daemon thread for every open line-mode bar: each silent for its interval writes its line
    (the work's own thread may be inside one long step: PyTorch releases the GIL in its kernels)."""

    _bars: weakref.WeakSet = weakref.WeakSet()
    _thread: threading.Thread | None = None
    _lock = threading.Lock()
    _wake = threading.Event()  # a new bar may have a shorter interval than the thread sleeps

    @classmethod
    def watch(cls, bar: _LineProgress) -> None:
        with cls._lock:
            cls._bars.add(bar)
            cls._wake.set()
            if cls._thread is None or not cls._thread.is_alive():
                cls._thread = threading.Thread(target=cls._run, name="spikeshield-progress",
                                               daemon=True)
                cls._thread.start()

    @classmethod
    def _run(cls) -> None:
        while True:
            with cls._lock:
                bars = [bar for bar in cls._bars if not bar._closed]
            shortest = min((bar._every for bar in bars), default=DEFAULT_INTERVAL)
            cls._wake.wait(min(1.0, shortest / 4))
            cls._wake.clear()
            for bar in bars:
                bar.beat()


class _Quiet:
    def write(self, text: str) -> None:
        pass

    def flush(self) -> None:
        pass


def progress_bar(iterable: Any = None, *, disable: bool | None = None, **kwargs: Any) -> _std_tqdm:
    """A progress bar over ``iterable`` (tqdm's arguments); ``disable=True`` silences it (the
    other ranks of a distributed job)."""
    if disable:
        return _auto_tqdm(iterable, disable=True, **kwargs)
    stream = kwargs.get("file") or sys.stderr
    interactive = getattr(stream, "isatty", lambda: False)()
    if interactive or _chosen_tqdm is not _std_tqdm:  # a terminal, or a notebook's widget
        return _auto_tqdm(iterable, disable=disable, **kwargs)
    interval = _interval()
    kwargs.update(leave=False, mininterval=interval, dynamic_ncols=False)
    return _LineProgress(iterable, every=interval, **kwargs)
