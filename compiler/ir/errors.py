"""Typed errors of spikeshield.

Every error a user can cause derives from :class:`SpikeshieldError`; the CLI turns it into one line on
stderr and exit code 2. Messages name the thing at fault and the fix.
"""

from __future__ import annotations


class SpikeshieldError(Exception):
    """Base class for errors caused by the user's input (model, data, options). Its message is one
    line whatever it quotes (a field name or a library's message from a hostile file may hold
    newlines)."""

    def __init__(self, *args: object) -> None:
        if args and isinstance(args[0], str):
            args = (" ".join(args[0].splitlines()), *args[1:])
        super().__init__(*args)


class IRValidationError(SpikeshieldError):
    """The graph IR is inconsistent: unknown op, shape mismatch, cycle, bad parameter."""


class UnsupportedOpError(SpikeshieldError):
    """A frontend met ops it cannot lower; the message lists every one of them."""


class ModelLoadError(SpikeshieldError):
    """A model file is missing, corrupt, or of a format no frontend reads."""


class DataError(SpikeshieldError):
    """A data spec is unknown, dataset files are missing or malformed, or shapes disagree."""


class ConfigError(SpikeshieldError):
    """An option has a value outside its valid range."""


class PassError(SpikeshieldError):
    """A compiler pass failed; the message lists the passes that had already run."""
