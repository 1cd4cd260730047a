"""A vocabulary's walk lent by a file with the same one: the header read is the one a walk reads."""

from __future__ import annotations

from pathlib import Path

import pytest
from builders import write_gguf

from zwaif_fallback.gguf_header import GGUFHeader, VocabStart, read_gguf_header
from zwaif_fallback.gguf_lending import VocabRun, read_borrowing


class FirstRunLender:
    """A ``RunLender`` that lends the first run a reader walked, and notes how each lent run
    fared."""

    def __init__(self) -> None:
        self.run: VocabRun | None = None
        self.outcomes: list[str | None] = []  # what ``tried`` was told

    def lend(self, start: VocabStart) -> VocabRun | None:
        return self.run

    def walked(self, run: VocabRun) -> None:
        self.run = self.run or run

    def tried(self, problem: str | None) -> None:
        self.outcomes.append(problem)


def read_lent(path: Path, lender: FirstRunLender) -> GGUFHeader:
    with open(path, "rb") as handle:
        return read_borrowing(handle, size=path.stat().st_size, path=path, lender=lender)


def vocabulary_and_merges() -> tuple[list[str], list[str]]:
    tokens = [f"w{i:05d}" for i in range(3000)]
    return tokens, [f"w{i:05d} w{i + 1:05d}" for i in range(2999)]


def test_a_lent_run_reads_the_header_a_walk_reads(tmp_path):
    tokens, merges = vocabulary_and_merges()
    lender = FirstRunLender()
    first = write_gguf(tmp_path / "a.gguf", tokens=tokens, merges=merges)
    other = write_gguf(tmp_path / "b.gguf", tokens=tokens, merges=merges, n_layer=3, n_embd=128,
                       weight_type="Q8_0")
    read_lent(first, lender)
    assert lender.run is not None
    assert [key for key, _ in lender.run.arrays] == ["tokenizer.ggml.tokens",
                                                       "tokenizer.ggml.token_type",
                                                       "tokenizer.ggml.merges"]
    header, walked = read_lent(other, lender), read_gguf_header(other)
    assert lender.outcomes == [None]
    assert (header.metadata, header.tensors, header.data_offset) == \
        (walked.metadata, walked.tensors, walked.data_offset)


@pytest.mark.parametrize("change", ["a token a byte longer", "a merge more"])
def test_a_lent_run_that_lands_elsewhere_is_walked(tmp_path, change):
    tokens, merges = vocabulary_and_merges()
    lender = FirstRunLender()
    read_lent(write_gguf(tmp_path / "a.gguf", tokens=tokens, merges=merges), lender)
    if change == "a merge more":
        merges = [*merges, "w00000 w00002"]
    else:
        tokens = [*tokens[:-10], tokens[-10] + "x", *tokens[-9:]]
    other = write_gguf(tmp_path / "b.gguf", tokens=tokens, merges=merges, n_layer=3)
    header, walked = read_lent(other, lender), read_gguf_header(other)
    assert len(lender.outcomes) == 1 and lender.outcomes[0], lender.outcomes  # why not
    assert (header.metadata, header.tensors, header.data_offset) == \
        (walked.metadata, walked.tensors, walked.data_offset)
