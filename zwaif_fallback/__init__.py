"""zwaif-fallback: keep a chatbot answering when its main LLM API fails.

Importing this package is cheap: names load on first use (PEP 562), and nothing
imports torch, transformers, llama_cpp, gradio or NVML until a feature needs it.
Hosts import it in their LLM call path: ``try_fallbacks(request)`` answers an OpenAI
chat-completions dict on a default manager, ``FallbackManager.chat_completion`` and
``stream_chat_completion`` on one the host owns.

Module map, top to bottom. Each part imports only the parts below it (lazy and
type-only imports included); tests/test_import_graph.py holds the code to this map
and to having no import cycle.

    porches       cli, cli_commands, cli_parser, cli_text, cli_process, __main__, default, server, front,
                  admission, cors, listening, embeddings, upstream_probe, upstreams, ollama_api, ollama_info,
                  relay, sse, fallback_api, fallback_api_models, fallback_api_health
    facade        manager, manager_hub, manager_measure
    measurement   measuring, pull_jobs, recommend, optimizer, bench_jobs, telemetry, health, scoring, bench,
                  quality, metrics, monitor, jobs
    call path     chats, characters, completions, completion_request, routing, failover, chat_run, results,
                  breaker, local, step_down, pool, backends
    fit           local_fits, fit, memory, calibration, dry_run, dry_run_log
    discovery     catalog, pull, pull_plan, download, hub, hub_api, hub_headers, hub_body, hub_http,
                  hub_models, model_info, locations, gguf_lending, gguf_header, gguf_cursor,
                  safetensors_header, ggml
    base          settings, settings_env, settings_fields, settings_file, hardware, gpu_probes,
                  ggml_devices, store, store_db, store_schema, store_writer, store_retention, errors,
                  units, net, files, logs, _model

* porches: the CLI (cli_commands: each command's handler; cli_parser: its subcommands and
  their arguments; cli_text: what it prints; cli_process: its stdout, its failures and its
  signals), ``try_fallbacks`` on a default manager, the OpenAI-compatible server (front:
  what every request passes before its route; admission: the API key and the request body
  it takes; cors: the web pages that may call it from a browser; listening: its socket and
  uvicorn; embeddings: passed on to the servers; upstreams: the servers it stands in front
  of, and upstream_probe: what they answer, in words for a person; ollama_api: Ollama's API
  beside it, and ollama_info: Ollama's routes that describe the models and its way of
  naming them; relay: its streams, servers' read on the event loop; sse: those that reach a
  local model, relayed from their threads), and Z-WAIF's ``API/fallback_api.py`` replaced
  whole (fallback_api: its chats and its local model; fallback_api_models: the machine and
  the models, in its shapes; fallback_api_health: speed, ranking, health and monitoring).
* facade: ``FallbackManager`` owns the state and delegates each call to one part; it
  inherits its methods for the Hub (manager_hub) and for measuring and steering
  (manager_measure), which sit apart with their docstrings.
* measurement: the manager's measuring parts, made on first use (measuring -> telemetry,
  bench_jobs, optimizer); benchmark runs and jobs (bench_jobs -> bench, quality); ranking,
  health and the auto-optimizer (optimizer -> health, scoring: a model's score); history,
  Prometheus metrics and sampling (telemetry -> store, metrics, monitor); downloads from
  the Hub as the manager runs them, one at a time as a job (pull_jobs -> pull, jobs).
* call path: one answer: OpenAI request dicts checked (completion_request) and answered
  (completions), input checks and recording (chats), a text-generation-webui
  character's persona for local models and remotes (characters), the targets in order
  (routing), deadline, retries and breakers (failover), the targets and one chat's run
  through them, shared with serve's relay (chat_run), what a chat gives back (results),
  one class per runtime (backends/; backends.llama_preflight: llama.cpp imported, and a GGUF
  loaded in a child process before its first load here; backends.llama_log: llama.cpp's own
  log, kept during a load and sent to logging between loads), the local models' pool,
  switching and keep_alive (local -> pool, local_fits), a load that runs out of memory
  stepping down (step_down).
* fit: a found model's fit against the memory free now, counting what the loaded one
  holds (local_fits), the memory estimate (memory), the verdict (fit), corrections measured
  on real loads (calibration), llama.cpp's own no_alloc dry run of a plan (dry_run ->
  dry_run_log: where its log says the memory would go).
* discovery: which models exist and what they are, read from their files' headers, local or
  on the Hub by range requests (hub -> hub_api: a file's metadata and a repo's listing,
  asked through huggingface_hub; hub_body, hub_http, hub_models; hub_headers: the
  headers, files that share a vocabulary walking it once); the GGUF reader (gguf_header ->
  gguf_cursor: the buffer, and the walk over string arrays), and a header read with the walk
  over its vocabulary lent by a file with the same one (gguf_lending -> gguf_header); pull
  downloads one from the Hub into a place discovery reads (pull -> pull_plan: which files,
  download: one file's bytes, verified).
* base: settings (settings_fields: the kinds of value a field takes, and its range in
  words; settings_file: the file on disk), hardware probes (hardware; gpu_probes: each
  way to ask about the GPUs; ggml_devices: llama.cpp's own device list), the SQLite store
  (store_db: its file, opened, migrated and recovered; store_schema: its migrations, and
  whether a file is ours; store_writer: its writer thread, off the chat path;
  store_retention: how long each table is kept, and its prune in short steps), the errors,
  and small helpers (units: sizes for people; net: which hosts are loopback; files: text
  as Windows tools save it, and a rename that waits for a scanner).
"""

from __future__ import annotations

import importlib as _importlib
import logging as _logging
import typing as _typing

from .errors import (
    AllTargetsFailed,
    BackendUnavailable,
    Busy,
    DownloadCancelled,
    FallbackError,
    HostUnavailable,
    HubAccessDenied,
    HubFileNotFound,
    HubOffline,
    HubUnavailable,
    IncompatibleModel,
    InvalidModelFile,
    InvalidSettings,
    JobNotFound,
    ModelLoadError,
    ModelNotFound,
    NotAllowed,
    NotEnoughSpace,
    NotStarted,
    OutOfMemory,
    PortUnavailable,
    StorageError,
)

if _typing.TYPE_CHECKING:
    from .bench import BenchmarkResult
    from .catalog import Catalog
    from .default import default_manager, try_fallbacks
    from .fit import Compatibility, Estimate, LoadConfig, MemoryBreakdown, estimate, plan
    from .gpu_probes import GPUInfo
    from .hardware import HardwareProbe, SystemStatus
    from .health import HealthReport, PerformanceStats
    from .jobs import Job, JobStatus
    from .manager import FallbackManager
    from .model_info import ModelInfo, ModelShape
    from .monitor import MonitoringReport
    from .results import Attempt, ChatResult, Switch
    from .scoring import Optimization
    from .settings import FallbackSettings

__version__ = "0.1.0"

# A host that configures no logging gets no warnings on its stderr from Python's last
# resort; one that does gets every record through its own handlers (the CLI's log file too).
_logging.getLogger(__name__).addHandler(_logging.NullHandler())

_WHERE = {
    "Attempt": "results", "BenchmarkResult": "bench", "Catalog": "catalog",
    "ChatResult": "results", "Compatibility": "fit", "Estimate": "fit",
    "FallbackManager": "manager", "FallbackSettings": "settings", "GPUInfo": "gpu_probes",
    "HardwareProbe": "hardware", "HealthReport": "health", "Job": "jobs", "JobStatus": "jobs",
    "LoadConfig": "fit", "MemoryBreakdown": "fit", "ModelInfo": "model_info",
    "ModelShape": "model_info", "MonitoringReport": "monitor", "Optimization": "scoring",
    "PerformanceStats": "health", "Switch": "results", "SystemStatus": "hardware",
    "default_manager": "default", "estimate": "fit", "plan": "fit", "try_fallbacks": "default",
}


def __getattr__(name: str) -> object:
    if name in _WHERE:
        value = getattr(_importlib.import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'zwaif_fallback' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "AllTargetsFailed",
    "Attempt",
    "BackendUnavailable",
    "BenchmarkResult",
    "Busy",
    "Catalog",
    "ChatResult",
    "Compatibility",
    "DownloadCancelled",
    "Estimate",
    "FallbackError",
    "FallbackManager",
    "FallbackSettings",
    "GPUInfo",
    "HardwareProbe",
    "HealthReport",
    "HostUnavailable",
    "HubAccessDenied",
    "HubFileNotFound",
    "HubOffline",
    "HubUnavailable",
    "IncompatibleModel",
    "InvalidModelFile",
    "InvalidSettings",
    "Job",
    "JobNotFound",
    "JobStatus",
    "LoadConfig",
    "MemoryBreakdown",
    "ModelInfo",
    "ModelLoadError",
    "ModelNotFound",
    "ModelShape",
    "MonitoringReport",
    "NotAllowed",
    "NotEnoughSpace",
    "NotStarted",
    "Optimization",
    "OutOfMemory",
    "PerformanceStats",
    "PortUnavailable",
    "StorageError",
    "Switch",
    "SystemStatus",
    "default_manager",
    "estimate",
    "plan",
    "try_fallbacks",
]
