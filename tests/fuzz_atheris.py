"""Coverage-guided fuzzing of the header readers with atheris (libFuzzer).

    python tests/fuzz_atheris.py gguf|safetensors [libFuzzer options]

Each input is written to a file and read; only InvalidModelFile may come out.
libFuzzer enforces the limits: -timeout (seconds per input) and -malloc_limit_mb.
"""

from __future__ import annotations

import os
import sys
import tempfile

import atheris

with atheris.instrument_imports():
    from zwaif_fallback.errors import InvalidModelFile
    from zwaif_fallback.gguf_header import read_gguf_header
    from zwaif_fallback.safetensors_header import read_safetensors_header

READERS = {"gguf": read_gguf_header, "safetensors": read_safetensors_header}
PATH = os.path.join(tempfile.mkdtemp(prefix="zwaif-atheris-"), "case.bin")


def main() -> None:
    read = READERS[sys.argv.pop(1)]

    def one_input(data: bytes) -> None:
        with open(PATH, "wb") as handle:
            handle.write(data)
        try:
            read(PATH)
        except InvalidModelFile:
            pass

    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
