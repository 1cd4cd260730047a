"""Real transformers loads against the estimator's Hugging Face path (memory._estimate_hf).

For three real model shapes (SmolLM2-135M, Qwen2-0.5B, TinyLlama-1.1B) it writes HF
folders whose config.json is the real one and whose model.safetensors declares every
parameter but holds sparse zeros (a model's memory does not depend on its weight
values; the files cost almost no disk). Each configuration then runs in a fresh
process: ``from_pretrained`` placed as the library's TransformersBackend would place
it, a prompt of ``n_ctx - 8`` token ids and 8 generated tokens (``use_cache``, so the
KV cache ends holding ``n_ctx`` tokens, what the estimate's ``n_ctx`` means), while a
thread samples NVML every 5 ms (this pid's ``usedGpuMemory``, the device's used
memory) and the process's RSS. The parent estimates the same folder and configuration
with the library and writes one JSON line per load.

Placements, as ``backends/transformers.py`` (``_device_map``) loads a fit:

* ``gpu``: ``gpu_layers > n_layers``, ``device_map="cuda:0"``, ``dtype="auto"``.
* ``partial`` (TinyLlama): ``gpu_layers = n_layers // 2``. The backend passes
  ``device_map="auto"`` and no ``max_memory``, so accelerate, not the fit, decides the
  split: it reads the free VRAM itself and keeps 90% of it for weights, filling the GPU
  from the *first* layers (llama.cpp and the estimate offload from the last). The child
  gets ``max_memory = 0.9 x (F - CUDA context)``, where F is the least free VRAM at
  which ``fit.plan`` picks that many layers (estimate + headroom): what accelerate
  would read on such a card. Layers accelerate leaves on the CPU still execute on the
  GPU (its offload hooks copy their weights in per forward), so their KV cache is on
  the GPU too.
* ``cpu``: ``gpu_layers = 0``, ``device_map="cpu"`` and float32 weights, as the
  backend loads on the CPU.

Usage (from the repository root; zwaif_fallback must be importable)::

    python benchmarks/gpu/hf_measure.py WORKDIR OUT.jsonl [--device cpu|cuda] [--quick]
        [--jobs N] [--timeout-s S] [--deadline-s S]

``--device cuda`` (the default): the three shapes at n_ctx 512 and 4096 on the GPU,
TinyLlama partial at both, and each shape on the CPU at 512; about 40-60 s on an H200
when NVML reports per-process memory (loads then run side by side, ``--jobs`` at a
time; otherwise one GPU load at a time). ``--device cpu``: only the CPU placements
(partial ones are listed as skipped, with accelerate's predicted split). ``--quick``:
SmolLM2 at 512 only. Loads not started within ``--deadline-s`` of the start are
recorded as skipped; each child is killed after ``--timeout-s``.

Needs torch, transformers, accelerate, safetensors and psutil; nvidia-ml-py for cuda.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import resource
import struct
import subprocess
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024
NEW_TOKENS = 8
SAMPLE_S = 0.005
GPU_DEVICE_INDEX = 0
ACCELERATE_GPU_SHARE = 0.9  # transformers' get_balanced_memory keeps 10% of free VRAM for buffers

# The config.json of each real checkpoint (the fields that decide the model's shape).
SHAPES: dict[str, dict[str, Any]] = {
    "smollm2-135m": {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 576,
        "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
        "num_key_value_heads": 3, "vocab_size": 49152, "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-05, "rope_theta": 100000, "hidden_act": "silu",
        "tie_word_embeddings": True, "bos_token_id": 0, "eos_token_id": 0,
        "torch_dtype": "bfloat16", "use_cache": True,
    },
    "qwen2-0.5b": {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 896,
        "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
        "num_key_value_heads": 2, "vocab_size": 151936, "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "hidden_act": "silu",
        "sliding_window": 131072, "use_sliding_window": False, "max_window_layers": 24,
        "tie_word_embeddings": True, "bos_token_id": 151643, "eos_token_id": 151643,
        "torch_dtype": "bfloat16", "use_cache": True,
    },
    "tinyllama-1.1b": {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 2048,
        "intermediate_size": 5632, "num_hidden_layers": 22, "num_attention_heads": 32,
        "num_key_value_heads": 4, "vocab_size": 32000, "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "hidden_act": "silu",
        "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2,
        "torch_dtype": "bfloat16", "use_cache": True,
    },
}
PARTIAL_SHAPES = ("tinyllama-1.1b",)
CONTEXTS = (512, 4096)
CPU_CONTEXT = 512  # a CPU prefill of 4096 tokens takes minutes for nothing new


# -- model folders ----------------------------------------------------------------------


def build_folder(workdir: Path, name: str) -> Path:
    """An HF folder of a real shape: its config.json and a sparse zero-filled model.safetensors."""
    import torch
    import transformers

    folder = workdir / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(SHAPES[name], indent=2))
    config = transformers.AutoConfig.from_pretrained(folder)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    # named_parameters() lists a tied weight once, as the real checkpoints store it.
    params = [(n, tuple(p.shape)) for n, p in model.named_parameters()]
    write_sparse_safetensors(folder / "model.safetensors", params)
    return folder


def write_sparse_safetensors(path: Path, tensors: list[tuple[str, tuple[int, ...]]]) -> None:
    """A BF16 safetensors file: the header, then a hole the size of the data (reads as zeros)."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in tensors:
        nbytes = math.prod(shape) * 2
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(raw)))
        handle.write(raw)
        handle.truncate(8 + len(raw) + offset)


def predict_device_map(folder: Path, max_memory: dict[int | str, int]) -> dict[str, Any] | None:
    """The split transformers' device_map="auto" computes for this max_memory (None if it cannot)."""
    import torch
    import transformers

    try:
        from transformers.integrations.accelerate import _get_device_map

        config = transformers.AutoConfig.from_pretrained(folder)
        with torch.device("meta"):
            model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        quiet = logging.getLogger("accelerate")  # "Device 0 is not available" on a CPU machine
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            return dict(_get_device_map(model, "auto", dict(max_memory), None))
        finally:
            quiet.setLevel(level)
    except Exception:  # a private helper: another transformers may lack or change it
        return None


def gpu_blocks(device_map: dict[str, Any] | None, n_layers: int) -> list[int] | None:
    """The decoder blocks a device map puts on a GPU (its keys are module prefixes, "" the root)."""
    if device_map is None:
        return None

    def device_of(module: str) -> Any:
        owners = [k for k in device_map if k in ("", module) or module.startswith(k + ".")]
        return device_map[max(owners, key=len)] if owners else None

    return [i for i in range(n_layers) if device_of(f"model.layers.{i}") not in (None, "cpu", "disk")]


# -- the child: one load, measured --------------------------------------------------------


class Sampler(threading.Thread):
    """Peaks of this process's RSS (and its anonymous part) and, with NVML, its GPU memory."""

    def __init__(self, *, nvml: bool) -> None:
        super().__init__(daemon=True)
        import psutil

        self._process = psutil.Process()
        self._pid = os.getpid()
        self._stop_event = threading.Event()
        self._gpu: Any = None
        if nvml:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._gpu = pynvml.nvmlDeviceGetHandleByIndex(GPU_DEVICE_INDEX)
        now = self.read()
        self.peak = dict(now)
        self.before = now

    def read(self) -> dict[str, float | None]:
        mem = self._process.memory_info()
        now: dict[str, float | None] = {"rss_mb": mem.rss / MIB, "rss_anon_mb": (mem.rss - mem.shared) / MIB,
                                        "gpu_process_mb": None, "gpu_device_mb": None}
        if self._gpu is not None:
            now["gpu_device_mb"] = self._nvml.nvmlDeviceGetMemoryInfo(self._gpu).used / MIB
            for proc in self._nvml.nvmlDeviceGetComputeRunningProcesses(self._gpu):
                if proc.pid == self._pid and proc.usedGpuMemory is not None:
                    now["gpu_process_mb"] = proc.usedGpuMemory / MIB
        return now

    def run(self) -> None:
        while not self._stop_event.wait(SAMPLE_S):
            for key, value in self.read().items():
                if value is not None:
                    self.peak[key] = max(self.peak.get(key) or 0.0, value)

    def stop(self) -> dict[str, float | None]:
        time.sleep(0.05)  # let NVML catch up with the last frees and allocations
        self._stop_event.set()
        self.join()
        return self.read()


def child(spec: dict[str, Any]) -> None:
    """Load, generate, measure; prints one ``RESULT {json}`` line on stdout."""
    cuda = spec["device_map"] != "cpu"
    sampler = Sampler(nvml=cuda)
    sampler.start()
    started = time.perf_counter()
    import torch
    import transformers

    result: dict[str, Any] = {"import_s": round(time.perf_counter() - started, 2),
                              "gpu_device_before_mb": sampler.before["gpu_device_mb"],
                              "rss_imported_mb": sampler.read()["rss_mb"]}
    if cuda:
        torch.zeros(1, device="cuda")
        torch.cuda.synchronize()
        deadline = time.monotonic() + 1.0
        while (context := sampler.read()["gpu_process_mb"]) is None and time.monotonic() < deadline:
            time.sleep(0.02)
        if context is None:  # NVML does not see this pid (a PID namespace): the device's used memory
            context = (sampler.read()["gpu_device_mb"] or 0.0) - (sampler.before["gpu_device_mb"] or 0.0)
            result["cuda_context_source"] = "device"
        result["cuda_context_mb"] = context - torch.cuda.memory_reserved() / MIB
    max_memory = spec.get("max_memory")
    if max_memory is not None:
        max_memory = {int(k) if k.isdigit() else k: v for k, v in max_memory.items()}
    dtype = torch.float32 if spec["dtype"] == "float32" else "auto"
    started = time.perf_counter()
    model = transformers.AutoModelForCausalLM.from_pretrained(
        spec["folder"], dtype=dtype, device_map=spec["device_map"], max_memory=max_memory,
        local_files_only=True, use_safetensors=True)
    model.eval()
    if cuda:
        torch.cuda.synchronize()
        result.update(torch_loaded_allocated_mb=torch.cuda.memory_allocated() / MIB,
                      torch_load_peak_allocated_mb=torch.cuda.max_memory_allocated() / MIB)
        torch.cuda.reset_peak_memory_stats()
    loaded = sampler.read()
    result.update(load_s=round(time.perf_counter() - started, 2), rss_loaded_mb=loaded["rss_mb"],
                  gpu_process_loaded_mb=loaded["gpu_process_mb"],
                  weights_mb_by_device=_bytes_by_device(model.parameters()),
                  attn_implementation=getattr(model.config, "_attn_implementation", None))
    device_map = getattr(model, "hf_device_map", None)
    if device_map:
        result["hf_device_map"] = {k: str(v) for k, v in device_map.items()}
        result["gpu_blocks"] = gpu_blocks(device_map, spec["n_layers"])

    n_prompt = spec["n_ctx"] - NEW_TOKENS
    ids = torch.full((1, n_prompt), 1, dtype=torch.long, device="cuda:0" if cuda else "cpu")
    started = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, use_cache=True,
                             pad_token_id=0, return_dict_in_generate=True)
    if cuda:
        torch.cuda.synchronize()
        result.update(torch_peak_allocated_mb=torch.cuda.max_memory_allocated() / MIB,
                      torch_peak_reserved_mb=torch.cuda.max_memory_reserved() / MIB)
    result.update(generate_s=round(time.perf_counter() - started, 2),
                  tokens=int(out.sequences.shape[-1]), kv_mb_by_device=_cache_bytes(
                      getattr(out, "cache", None) or getattr(out, "past_key_values", None)))
    final = sampler.stop()
    peak = sampler.peak
    if cuda:
        before_mb = sampler.before["gpu_device_mb"] or 0.0
        result["gpu_device_delta_mb"] = (peak["gpu_device_mb"] or 0.0) - before_mb
    result.update(gpu_process_peak_mb=peak["gpu_process_mb"], gpu_device_peak_mb=peak["gpu_device_mb"],
                  gpu_process_final_mb=final["gpu_process_mb"], rss_peak_sampled_mb=peak["rss_mb"],
                  rss_anon_peak_mb=peak["rss_anon_mb"],
                  # the kernel's own high-water mark, in KiB on Linux: catches what 5 ms sampling misses
                  rss_peak_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print("RESULT " + json.dumps(_rounded(result)), flush=True)


def _bytes_by_device(tensors: Any) -> dict[str, float]:
    by: dict[str, float] = {}
    for t in tensors:
        # accelerate's offload hooks leave a meta placeholder on the module, the weights on the CPU
        where = "cpu (offloaded)" if t.device.type == "meta" else str(t.device)
        by[where] = by.get(where, 0.0) + t.numel() * t.element_size() / MIB
    return by


def _cache_bytes(cache: Any) -> dict[str, float] | None:
    layers = getattr(cache, "layers", None)
    if layers is None:
        return None
    tensors = [t for layer in layers for t in (getattr(layer, "keys", None), getattr(layer, "values", None))
               if t is not None and hasattr(t, "element_size")]
    return _bytes_by_device(tensors)


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 1)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


# -- the parent: plan, run children, estimate, report -------------------------------------


@dataclass
class Job:
    model: str
    placement: str  # gpu, partial or cpu
    n_ctx: int
    gpu_layers: int  # llama.cpp's meaning, as the fit and the estimate use it
    spec: dict[str, Any]
    skip: str | None = None  # why it is not run
    row: dict[str, Any] = field(default_factory=dict)  # its JSON line, filled as it runs

    def __post_init__(self) -> None:
        self.row.update(model=self.model, placement=self.placement, n_ctx=self.n_ctx,
                        gpu_layers=self.gpu_layers, device_map=self.spec["device_map"],
                        dtype=self.spec["dtype"], prompt_tokens=self.n_ctx - NEW_TOKENS,
                        new_tokens=NEW_TOKENS)
        if self.spec["max_memory"] is not None:
            self.row["max_memory_mb"] = {str(k): round(v / MIB) for k, v in self.spec["max_memory"].items()}

    @property
    def uses_gpu(self) -> bool:
        return self.placement != "cpu"


class Lanes:
    """Admits GPU loads ``width`` at a time and records how many overlapped each one."""

    def __init__(self) -> None:
        self.width = 1
        self._cond = threading.Condition()
        self._active: list[Job] = []

    def enter(self, job: Job) -> None:
        with self._cond:
            self._cond.wait_for(lambda: len(self._active) < self.width)
            self._active.append(job)
            for other in self._active:
                other.row["gpu_loads_at_once"] = max(other.row.get("gpu_loads_at_once", 1), len(self._active))

    def leave(self, job: Job) -> None:
        with self._cond:
            self._active.remove(job)
            self._cond.notify_all()


def plan_jobs(device: str, quick: bool, folders: dict[str, Path], infos: dict[str, Any]) -> list[Job]:
    import psutil

    from zwaif_fallback.fit import HEADROOM_MB
    from zwaif_fallback.memory import TORCH_CUDA_CONTEXT_MB, LoadConfig, estimate

    names = ["smollm2-135m"] if quick else list(SHAPES)
    contexts = (512,) if quick else CONTEXTS
    jobs = []
    for name in names:
        folder, n_layers = str(folders[name]), SHAPES[name]["num_hidden_layers"]
        base = {"folder": folder, "n_layers": n_layers, "dtype": "auto", "max_memory": None}
        if device == "cuda":
            for n_ctx in contexts:
                jobs.append(Job(name, "gpu", n_ctx, n_layers + 1,
                                {**base, "n_ctx": n_ctx, "device_map": "cuda:0"}))
        if name in PARTIAL_SHAPES:
            for n_ctx in contexts:
                k = n_layers // 2
                est = estimate(infos[name], LoadConfig(n_ctx=n_ctx, gpu_layers=k))
                free_mb = est.vram_mb + HEADROOM_MB
                weights_mb = ACCELERATE_GPU_SHARE * (free_mb - TORCH_CUDA_CONTEXT_MB)
                max_memory: dict[int | str, int] = {
                    GPU_DEVICE_INDEX: int(weights_mb * MIB),
                    "cpu": int(psutil.virtual_memory().available * 0.9)}
                job = Job(name, "partial", n_ctx, k, {**base, "n_ctx": n_ctx, "device_map": "auto",
                                                      "max_memory": max_memory})
                job.row.update(fit_free_vram_mb=round(free_mb, 1),
                               predicted_gpu_blocks=gpu_blocks(predict_device_map(folders[name], max_memory),
                                                               n_layers))
                jobs.append(job)
        jobs.append(Job(name, "cpu", CPU_CONTEXT, 0,
                        {**base, "n_ctx": CPU_CONTEXT, "device_map": "cpu", "dtype": "float32"}))
    return jobs


def estimate_row(job: Job, info: Any) -> dict[str, Any]:
    from zwaif_fallback.memory import LoadConfig, estimate

    est = estimate(info, LoadConfig(n_ctx=job.n_ctx, gpu_layers=job.gpu_layers))
    return {"gpu_layers": est.gpu_layers, "n_layers": est.n_layers, "vram_mb": round(est.vram_mb, 1),
            "ram_mb": round(est.ram_mb, 1), "vram": est.vram.rounded().model_dump(),
            "ram": est.ram.rounded().model_dump()}


def ratios(job: Job) -> dict[str, float | None]:
    """estimate / measured: above 1 the estimate is generous, below 1 it falls short."""
    est, got = job.row["estimate"], job.row.get("measured") or {}

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a is not None and b else None

    reserved, context = got.get("torch_peak_reserved_mb"), got.get("cuda_context_mb")
    torch_total = reserved + context if reserved is not None and context is not None else None
    out = {"ram_vs_rss_peak": ratio(est["ram_mb"], got.get("rss_peak_mb")),
           "ram_vs_rss_anon_peak": ratio(est["ram_mb"], got.get("rss_anon_peak_mb"))}
    if job.uses_gpu:
        out.update(vram_vs_nvml_peak=ratio(est["vram_mb"], got.get("gpu_process_peak_mb")),
                   vram_vs_torch_reserved_plus_context=ratio(est["vram_mb"], torch_total))
        if job.row.get("gpu_loads_at_once") == 1:  # the device's growth is this load's alone
            out["vram_vs_nvml_device_delta"] = ratio(est["vram_mb"], got.get("gpu_device_delta_mb"))
    return out


def run_child(job: Job, timeout_s: float) -> None:
    started = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, __file__, "--child", json.dumps(job.spec)],
                              capture_output=True, text=True, timeout=timeout_s)
        stdout, stderr, why = done.stdout, done.stderr, f"exit status {done.returncode}"
        failed = done.returncode != 0
    except subprocess.TimeoutExpired as exc:
        stdout, stderr = _text(exc.stdout), _text(exc.stderr)
        why, failed = f"killed after the {timeout_s:.0f} s timeout", True
    found = re.search(r"^RESULT (.*)$", stdout, re.M)
    job.row.update(ok=not failed and found is not None, wall_s=round(time.perf_counter() - started, 2))
    if found:
        job.row["measured"] = json.loads(found.group(1))
    if not job.row["ok"]:
        last = stderr.strip().splitlines()[-1:] or ["(no output)"]
        job.row["error"] = f"{why}: {last[0][:200]}\n{stderr.strip()[-1500:]}"


def _text(output: str | bytes | None) -> str:
    return output.decode(errors="replace") if isinstance(output, bytes) else output or ""


def run_jobs(jobs: list[Job], infos: dict[str, Any], out: Path, *, width: int, timeout_s: float,
             deadline: float) -> None:
    lanes, lock = Lanes(), threading.Lock()
    sink = open(out, "w")

    def one(job: Job) -> None:
        entered = job.uses_gpu and job.skip is None
        if entered:
            lanes.enter(job)
        try:  # one broken configuration must not stop the others
            job.row["estimate"] = estimate_row(job, infos[job.model])
            if job.skip is not None:
                job.row.update(ok=False, error=job.skip)
            elif time.monotonic() > deadline:
                job.row.update(ok=False, error="skipped: not started within --deadline-s")
            else:
                run_child(job, timeout_s)
            job.row["ratio"] = ratios(job)
            peak = (job.row.get("measured") or {}).get("gpu_process_peak_mb")
            if job.placement == "partial" and peak is not None:
                job.row["over_fit_free_vram_mb"] = round(peak - job.row["fit_free_vram_mb"], 1)
        except Exception:
            job.row.update(ok=False, error=traceback.format_exc()[-1500:])
        finally:
            if entered:
                lanes.leave(job)
        with lock:
            sink.write(json.dumps(job.row) + "\n")
            sink.flush()
            status = "ok" if job.row["ok"] else job.row["error"].splitlines()[0][:160]
            print(f"[{time.strftime('%X')}] {job.model} {job.placement} n_ctx={job.n_ctx}: "
                  f"{status} ({job.row.get('wall_s', 0)} s)", flush=True)

    try:
        gpu_jobs = [j for j in jobs if j.uses_gpu and j.skip is None]
        rest = list(jobs)
        if gpu_jobs:  # the first GPU load alone: does NVML see this process's memory?
            one(gpu_jobs[0])
            rest.remove(gpu_jobs[0])
            per_process = (gpu_jobs[0].row.get("measured") or {}).get("gpu_process_peak_mb") is not None
            lanes.width = width if per_process else 1
            print("NVML per-process memory:", "yes, GPU loads side by side" if per_process
                  else "no, one GPU load at a time (the device's used memory is the measure)", flush=True)
        # Offloaded loads are the slowest: first; the CPU ones matter least here: last.
        rest.sort(key=lambda j: ("partial", "gpu", "cpu").index(j.placement))
        with ThreadPoolExecutor(max(width, 1)) as pool:
            list(pool.map(one, rest))
    finally:
        sink.close()


def table(jobs: list[Job]) -> str:
    """One row per load; a NVML figure marked * is the device's growth (no per-process figure)."""
    def mb(value: float | None) -> str:
        return "-" if value is None else f"{value:.0f}"

    def x(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    header = ["model", "place", "ctx", "gpu blk", "est VRAM", "NVML peak", "est/NVML", "res+ctx",
              "est/res+ctx", "est RAM", "RSS peak", "est/RSS", "anon pk", "est/anon", "wall s", "status"]
    rows: list[list[object]] = [list(header)]
    for job in jobs:
        row, got = job.row, job.row.get("measured") or {}
        est, ratio = row.get("estimate", {}), row.get("ratio", {})
        reserved, context = got.get("torch_peak_reserved_mb"), got.get("cuda_context_mb")
        blocks = got.get("gpu_blocks", row.get("predicted_gpu_blocks"))
        n_blocks = (len(blocks) if blocks is not None else
                    SHAPES[job.model]["num_hidden_layers"] if job.placement == "gpu" else 0)
        nvml, nvml_ratio = mb(got.get("gpu_process_peak_mb")), x(ratio.get("vram_vs_nvml_peak"))
        if got.get("gpu_process_peak_mb") is None and ratio.get("vram_vs_nvml_device_delta") is not None:
            nvml = mb(got.get("gpu_device_delta_mb")) + "*"
            nvml_ratio = x(ratio.get("vram_vs_nvml_device_delta")) + "*"
        rows.append([job.model, job.placement, job.n_ctx, n_blocks, mb(est.get("vram_mb")), nvml, nvml_ratio,
                     mb(reserved + context if reserved is not None and context is not None else None),
                     x(ratio.get("vram_vs_torch_reserved_plus_context")), mb(est.get("ram_mb")),
                     mb(got.get("rss_peak_mb")), x(ratio.get("ram_vs_rss_peak")),
                     mb(got.get("rss_anon_peak_mb")), x(ratio.get("ram_vs_rss_anon_peak")),
                     row.get("wall_s", "-"),
                     "ok" if row.get("ok") else (row.get("error") or "?").splitlines()[0][:40]])
    widths = [max(len(str(line[i])) for line in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(c).rjust(w) for c, w in zip(line, widths, strict=True)) for line in rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", nargs="?", type=Path)
    parser.add_argument("out", nargs="?", type=Path)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    parser.add_argument("--quick", action="store_true", help="SmolLM2 at n_ctx 512 only")
    parser.add_argument("--jobs", type=int, default=4, help="GPU loads at once (when NVML allows)")
    parser.add_argument("--timeout-s", type=float, default=None,
                        help="a child is killed after this (default: 45 with cuda, 600 with cpu)")
    parser.add_argument("--deadline-s", type=float, default=None,
                        help="start no load after this (default: 75 with cuda, 900 with cpu)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(json.loads(args.child))
        return
    if args.workdir is None or args.out is None:
        parser.error("WORKDIR and OUT.jsonl are required")
    started = time.monotonic()
    deadline = started + (args.deadline_s or (75.0 if args.device == "cuda" else 900.0))
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from zwaif_fallback import FallbackSettings
    from zwaif_fallback.catalog import Catalog

    names = ["smollm2-135m"] if args.quick else list(SHAPES)
    folders = {name: build_folder(args.workdir, name) for name in names}
    catalog, settings = Catalog(), FallbackSettings(scan_system_stores=False)
    infos = {name: catalog.inspect_path(folder, settings) for name, folder in folders.items()}
    for name, info in infos.items():
        if not info.valid:
            sys.exit(f"the catalog rejects {folders[name]}: {info.error}")
    jobs = plan_jobs(args.device, args.quick, folders, infos)
    if args.device == "cpu":
        for job in jobs:
            if job.uses_gpu:
                job.skip = "skipped: needs --device cuda"
    print(f"{len(folders)} folders in {time.monotonic() - started:.1f} s; {len(jobs)} loads", flush=True)
    run_jobs(jobs, infos, args.out, width=args.jobs if args.device == "cuda" else 1,
             timeout_s=args.timeout_s or (45.0 if args.device == "cuda" else 600.0), deadline=deadline)
    print(table(jobs))
    print(f"{sum(bool(j.row.get('ok')) for j in jobs)} of {len(jobs)} loads measured in "
          f"{time.monotonic() - started:.0f} s; lines in {args.out}")


if __name__ == "__main__":
    main()
