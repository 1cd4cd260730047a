"""Whether SillyTavern's way of reading an Ollama stream gets serve's answers whole.

SillyTavern reads Ollama's ``/api/generate`` stream (``parseOllamaStream`` in its
src/endpoints/backends/text-completions.js) by parsing all it has received as one JSON
object each time a network read arrives, and empties its buffer only when that parse works.
Two lines in one read never parse, so every later piece of the answer is lost. Ollama writes
a line a token; serve writes its lines at least ``OllamaChunks.write_gap_s`` apart and joins
what comes meanwhile into one line.

Each path (this tree's serve, and ``serve@DIR`` per ``--baseline DIR``, an earlier version),
in turn, answers the same streamed ``/api/generate`` request from two primaries:

* llama.cpp's server (``llama_cpp.server``) with SmolLM2: a token at a time, as a real model;
* ``fast_upstream.py``: 200 chunks as fast as it can, so that reads carry many pieces.

Each stream is read once, with httpx (one ``iter_raw`` part a network read), and parsed two
ways: as SillyTavern does, and line by line. An answer is whole when both give the same text.
The table gives the whole answers, the reads an answer took, and the median time from the
request to the stream's end, which the write gap could lengthen.

    .venv/bin/python benchmarks/bench_ollama_readers.py [--rounds 30] [--baseline DIR]
"""

from __future__ import annotations

import argparse
import codecs
import json
import statistics
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from _common import table
from bench_serve import BASELINES, free_port, llama_server, process, serves

ASK = {"model": "x", "prompt": "Count from 1 to 100, one number per line.", "stream": True,
       "options": {"num_predict": 100, "temperature": 0.0, "seed": 1}}


@dataclass
class Tally:
    """One path's answers from one primary."""

    whole: int = 0
    reads: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)


def read_like_sillytavern(root: str) -> tuple[bool, int, float]:
    """One streamed answer: whether SillyTavern's reader got it whole, the reads it took,
    and the seconds from the request to the stream's end."""
    decoder, buffer, taken, raw, reads = codecs.getincrementaldecoder("utf-8")(), "", [], b"", 0
    start = time.perf_counter()
    with httpx.stream("POST", root + "/api/generate", json=ASK, timeout=120) as response:
        response.raise_for_status()
        for data in response.iter_raw():
            reads += 1
            raw += data
            buffer += decoder.decode(data)
            try:  # all it has, as one object; kept until that works
                taken.append(json.loads(buffer).get("response", ""))
                buffer = ""
            except ValueError:
                pass
    seconds = time.perf_counter() - start
    lines = [json.loads(line) for line in raw.decode().splitlines() if line.strip()]
    return "".join(taken) == "".join(line.get("response", "") for line in lines), reads, seconds


def fast_upstream(stack: ExitStack) -> str:
    port = free_port()
    stack.enter_context(process([sys.executable, str(Path(__file__).with_name("fast_upstream.py")),
                                 str(port), "200"], f"http://127.0.0.1:{port}/v1/models"))
    return f"http://127.0.0.1:{port}/v1"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30, help="answers per path and primary")
    parser.add_argument("--baseline", type=Path, action="append", default=[], metavar="DIR",
                        help="also serve from this source tree (an earlier version)")
    args = parser.parse_args()
    BASELINES.extend(path.resolve() for path in args.baseline)
    rows: list[list[object]] = [["primary", "path", "whole answers", "reads an answer (median)",
                                 "to the stream's end (median)"]]
    with ExitStack() as stack:
        for primary_name, primary in (("llama_cpp.server", llama_server(stack)),
                                      ("fast_upstream", fast_upstream(stack))):
            paths = serves(stack, primary)
            tallies = {path.name: Tally() for path in paths}
            for _ in range(args.rounds):  # interleaved: the machine drifts
                for path in paths:
                    whole, reads, seconds = read_like_sillytavern(path.base.removesuffix("/v1"))
                    tally = tallies[path.name]
                    tally.whole += whole
                    tally.reads.append(reads)
                    tally.seconds.append(seconds)
            for name, tally in tallies.items():
                rows.append([primary_name, name, f"{tally.whole} of {args.rounds}",
                             f"{statistics.median(tally.reads):.0f}",
                             f"{statistics.median(tally.seconds) * 1000:.1f} ms"])
    print(table(rows))


if __name__ == "__main__":
    main()
