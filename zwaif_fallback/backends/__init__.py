"""Runtimes behind one interface. Concrete backends import their heavy library lazily."""

from .base import Backend, GenerationParams, TargetFailed, check_messages

__all__ = ["Backend", "GenerationParams", "TargetFailed", "check_messages"]
