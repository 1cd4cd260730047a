"""Sizes for people: the one formatter of the CLI, fit reasons, health details and the UI."""

from __future__ import annotations

import pytest

from zwaif_fallback.units import gib, size_text


@pytest.mark.parametrize(("mb", "smallest", "text"), [
    (1536, "MiB", "1.5 GiB"), (1024, "MiB", "1.0 GiB"), (980.4, "MiB", "980 MiB"),
    (0.4, "MiB", "0 MiB"), (0, "MiB", "0 MiB"),
    (512, "GiB", "0.5 GiB"), (24064, "GiB", "23.5 GiB"),
    (0.5, "KiB", "512 KiB"), (2.0, "KiB", "2 MiB"), (2048, "KiB", "2.0 GiB"),
])
def test_a_size_reads_in_the_largest_unit_that_fits(mb, smallest, text):
    assert size_text(mb, smallest=smallest) == text


def test_gib_is_the_bare_number():
    assert f"{gib(6144)} of {gib(8192)} GiB" == "6.0 of 8.0 GiB"
