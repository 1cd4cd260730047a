"""Every error zwaif-fallback raises, named for what the caller does next.

    FallbackError                 the root: catch this to catch everything
    ├── InvalidSettings           a value is out of range or the wrong type: fix it
    ├── ModelNotFound             no model by that name: pick one of the known names
    ├── InvalidModelFile          the file is not a usable model: replace or re-download it
    ├── IncompatibleModel         the model cannot run on this machine: pick a smaller one
    ├── ModelLoadError            the runtime failed to load it: see the message
    ├── BackendUnavailable        an optional runtime is not installed: pip install the extra
    └── AllTargetsFailed          no target could answer: see ``attempts``

Messages say what to do, because they end up in front of a person (CLI, UI).
Third-party exceptions are translated at the edge with ``raise ... from exc``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = [
    "AllTargetsFailed",
    "BackendUnavailable",
    "FallbackError",
    "IncompatibleModel",
    "InvalidModelFile",
    "InvalidSettings",
    "ModelLoadError",
    "ModelNotFound",
]


class FallbackError(Exception):
    """Root of every error raised by zwaif-fallback."""

    #: CLI exit status: 2 for bad input from the user, 1 for a failed operation.
    exit_code = 1


class InvalidSettings(FallbackError, ValueError):
    """A setting is out of range, of the wrong type, or cannot be changed here."""

    exit_code = 2

    def __init__(self, message: str, *, problems: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.problems = list(problems) or [message]


class ModelNotFound(FallbackError, LookupError):
    """No discovered model has that name, and it is not an existing file path."""

    exit_code = 2

    def __init__(self, name: str, known: Sequence[str] = (), suggestions: Sequence[str] = ()):
        self.name = name
        self.known = list(known)
        if suggestions:
            hint = "did you mean " + ", ".join(repr(s) for s in suggestions) + "?"
        elif known:
            shown = ", ".join(self.known[:8]) + (", ..." if len(self.known) > 8 else "")
            hint = f"known models: {shown}"
        else:
            hint = "no models were discovered: put a .gguf file in the models folder"
        super().__init__(f"no model named {name!r}; {hint} (list them with: zwaif-fallback models)")


class InvalidModelFile(FallbackError):
    """A file claims to be a model but cannot be read as one."""

    def __init__(self, path: Any, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class IncompatibleModel(FallbackError):
    """The model does not fit this machine in any configuration."""


class ModelLoadError(FallbackError):
    """A runtime failed to load a model that looked valid."""


class BackendUnavailable(FallbackError):
    """An optional dependency is missing; the message names the pip command."""


class AllTargetsFailed(FallbackError):
    """Every target of the failover chain failed; ``attempts`` says how."""

    def __init__(self, attempts: Sequence[Any]) -> None:
        self.attempts = list(attempts)
        lines = "; ".join(
            f"{getattr(a, 'target', '?')}: {getattr(a, 'error', '?')}" for a in self.attempts
        )
        super().__init__(f"no target could answer ({lines or 'no targets configured'})")
