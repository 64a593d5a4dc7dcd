"""Progress of long work, on a terminal and in a log file alike.

On a terminal (or in a notebook) this is a tqdm bar. When the output goes elsewhere (a log file,
``nohup``, a batch job), tqdm on its own says nothing until the work ends; here it writes one
plain line every ``SPIKESHIELD_PROGRESS_SECONDS`` seconds (default 30) while the work lasts and a
last line when it ends, and nothing at all for work shorter than that interval.
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Any

from tqdm.auto import tqdm as _auto_tqdm
from tqdm.autonotebook import tqdm as _chosen_tqdm  # tqdm.std's unless in a notebook
from tqdm.std import tqdm as _std_tqdm

from spikeshield.compiler.ir.errors import ConfigError

INTERVAL_VARIABLE = "SPIKESHIELD_PROGRESS_SECONDS"
DEFAULT_INTERVAL = 30.0


def _interval() -> float:
    text = os.environ.get(INTERVAL_VARIABLE)
    if text is None:
        return DEFAULT_INTERVAL
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (value >= 0 and math.isfinite(value)):
        raise ConfigError(f"{INTERVAL_VARIABLE} must be a number of seconds >= 0, got {text!r}")
    return value


class _LineProgress(_std_tqdm):
    """tqdm that writes whole lines, at most one per interval, for streams that are not terminals."""

    def __init__(self, *args: Any, every: float = DEFAULT_INTERVAL, **kwargs: Any) -> None:
        self._lines, self._every, self._last = 0, every, time.monotonic()
        super().__init__(*args, **kwargs)

    def display(self, msg: str | None = None, pos: int | None = None, force: bool = False) -> bool:
        # Every refresh comes here (updates, set_postfix): keep to one line per interval.
        now = time.monotonic()
        if not force and now - self._last < self._every:
            return True
        text = (self.__str__() if msg is None else msg).strip()
        if text:
            self.fp.write(text + "\n")
            self.fp.flush()
            self._lines += 1
            self._last = now
        return True

    def close(self) -> None:
        if not self.disable and self._lines:
            self.display(force=True)  # where it ended; work that never showed a line stays silent
        self.fp = _Quiet()  # tqdm's own close writes a carriage return to clear a terminal line
        super().close()


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
