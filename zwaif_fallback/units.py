"""Sizes for people: the one formatter the CLI, fit reasons, health details and the UI use.

Sizes are MiB everywhere in this package (``vram_mb``, ``ram_mb``); text shows them in
the largest unit that reads well.
"""

from __future__ import annotations

from typing import Literal

__all__ = ["gib", "size_text"]

Unit = Literal["KiB", "MiB", "GiB"]


def gib(mb: float) -> str:
    """``mb`` in GiB with one decimal, without the unit: for "6.0 of 8.0 GiB"."""
    return f"{mb / 1024:.1f}"


def size_text(mb: float, *, smallest: Unit = "MiB") -> str:
    """``mb`` as "1.5 GiB" from 1 GiB up, "512 MiB" from 1 MiB up, "300 KiB" below.

    Args:
        mb: the size in MiB.
        smallest: the smallest unit shown: "GiB" shows every size in GiB ("0.5 GiB"),
            "MiB" rounds anything under 1 MiB to MiB ("0 MiB"), "KiB" goes down to KiB.
    """
    if mb >= 1024 or smallest == "GiB":
        return f"{gib(mb)} GiB"
    if mb >= 1 or smallest == "MiB":
        return f"{mb:.0f} MiB"
    return f"{mb * 1024:.0f} KiB"
