"""The model catalog: every model on this machine, named uniquely, read once.

Sources, in order of precedence for names: ``models_dir``, ``hf_models``, the
bundled SmolLM2, then the stores people already have (Hugging Face cache,
LM Studio, Ollama). Headers are cached by (path, size, mtime), so a refresh
re-reads only files that changed.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

from .errors import InvalidSettings, ModelNotFound
from .files import expanded
from .locations import (
    Candidate,
    bundled_models,
    group_gguf_files,
    hf_cache_dir,
    hf_cache_models,
    hf_folder_candidate,
    hf_snapshot,
    lmstudio_models,
    ollama_models,
    walk_models_dir,
)
from .model_info import ModelInfo, displayable, inspect_candidate
from .settings import FallbackSettings

__all__ = ["Catalog", "looks_like_path"]

log = logging.getLogger(__name__)

_StatKey = tuple[str, tuple[tuple[str, int, int], ...], bool]


def looks_like_path(text: str) -> bool:
    """True when a person typed a path rather than a model name."""
    return (os.sep in text or "/" in text or (os.altsep or "/") in text
            or text.lower().endswith(".gguf") or text.startswith("~"))


def _is_folder(text: str) -> bool:
    """Whether ``text`` names a folder here; False for what cannot be a path (too long, a NUL)."""
    try:
        return Path(text).is_dir()
    except (OSError, ValueError):
        return False


class Catalog:
    """Discovers models and resolves the names people type. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._headers: dict[_StatKey, ModelInfo] = {}
        self._models: list[ModelInfo] | None = None
        self._settings_key: tuple[object, ...] | None = None

    def discover(self, settings: FallbackSettings, *, refresh: bool = False) -> list[ModelInfo]:
        """Every model found, valid and invalid, sorted by source then name."""
        key = (settings.models_dir, tuple(settings.hf_models), settings.scan_system_stores,
               settings.allow_pickle)
        with self._lock:
            if self._models is not None and not refresh and key == self._settings_key:
                return list(self._models)
            models = self._scan(settings)
            self._models, self._settings_key = models, key
            return list(models)

    def resolve(self, name_or_path: str, settings: FallbackSettings) -> ModelInfo:
        """The model a person means by ``name_or_path``.

        Names are matched against the catalog (exactly, then ignoring case, then as the
        file's name: ``model.Q4_K_M.gguf``). Only
        an existing file or folder is opened, and only when the text looks like a path or
        names a folder (a bare folder name in the current directory).

        Raises:
            ModelNotFound: with the closest known names.
            InvalidSettings: ``name_or_path`` is not text.
        """
        if not isinstance(name_or_path, str):
            raise InvalidSettings(f"a model name must be text, not {type(name_or_path).__name__}")
        wanted = name_or_path.strip()
        models = self.discover(settings)
        for match in (lambda m: m.name == wanted, lambda m: m.name.lower() == wanted.lower()):
            found = [m for m in models if match(m)]
            if len(found) == 1:
                return found[0]
        if wanted and (looks_like_path(wanted) or _is_folder(wanted)):
            path = expanded(wanted)
            if path.exists() or path.is_symlink():
                return self.inspect_path(path, settings)
        # a file's name as a file manager shows it, where no file here has it
        found = [m for m in models if Path(m.path).name.lower() == wanted.lower()]
        if len(found) == 1:
            return found[0]
        usable = [m.name for m in models if m.valid]
        broken = [m.name for m in models if not m.valid]
        names = usable + broken  # usable first, so that the suggestions prefer them
        lowered = wanted.lower()
        close = [n for n in names if lowered and lowered in n.lower()][:3]
        close = close or difflib.get_close_matches(wanted, names, n=3, cutoff=0.5)
        raise ModelNotFound(wanted, usable, close, broken=broken, path=looks_like_path(wanted))

    def inspect_path(self, path: Path, settings: FallbackSettings) -> ModelInfo:
        """Read one file or folder the user pointed at."""
        if path.is_dir():
            candidate = hf_folder_candidate(path, "path")
        else:
            candidate = next(group_gguf_files([path], "path"))
        return self._inspect(candidate, settings)

    # -- internals ------------------------------------------------------------

    def _scan(self, settings: FallbackSettings) -> list[ModelInfo]:
        seen_paths: set[str] = set()
        used_names: set[str] = set()
        models = []
        for candidate in self._candidates(settings):
            # The same file reached twice (a symlinked folder) is listed once; Ollama's
            # tags that share a blob are different names for it and are all listed.
            real = _real(candidate.path) + (f"#{candidate.name}" if candidate.source == "ollama" else "")
            if real in seen_paths:
                continue
            seen_paths.add(real)
            info = self._inspect(candidate, settings)
            name = _unique(info.name, candidate.source, used_names)
            used_names.add(name)
            models.append(info.model_copy(update={"name": name}) if name != info.name else info)
        log.info("discovered %d models (%d valid)", len(models), sum(m.valid for m in models))
        return models

    def _candidates(self, settings: FallbackSettings) -> Iterator[Candidate]:
        yield from _guard("models_dir", walk_models_dir(Path(settings.models_dir), "models_dir"))
        for entry in settings.hf_models:
            yield from _guard("hf_models", _hf_entry(entry))
        yield from _guard("bundled", bundled_models())
        if settings.scan_system_stores:
            yield from _guard("hf_cache", hf_cache_models())
            yield from _guard("lmstudio", lmstudio_models())
            yield from _guard("ollama", ollama_models())

    def _inspect(self, candidate: Candidate, settings: FallbackSettings) -> ModelInfo:
        key = _stat_key(candidate, settings.allow_pickle)
        cached = self._headers.get(key) if key else None
        if cached is None:
            cached = inspect_candidate(candidate, allow_pickle=settings.allow_pickle)
            if key:
                self._headers[key] = cached
        return cached.model_copy(update={"name": displayable(candidate.name), "source": candidate.source,
                                         "path": str(candidate.path)})


def _guard(source: str, candidates: Iterable[Candidate]) -> Iterator[Candidate]:
    """A store that cannot be listed is logged and skipped; it never stops discovery."""
    try:
        yield from candidates
    except (OSError, RuntimeError) as exc:  # RuntimeError: Path.home() found no home folder
        log.warning("could not list %s models: %s", source, exc)


def _hf_entry(entry: str) -> Iterator[Candidate]:
    path = expanded(entry)
    if path.is_dir():
        yield from walk_models_dir(path, "hf_models")
        return
    if path.is_file():
        yield from group_gguf_files([path], "hf_models")
        return
    repo = hf_cache_dir() / ("models--" + entry.replace("/", "--"))
    snapshot = hf_snapshot(repo) if repo.is_dir() else None
    if snapshot is not None:
        yield hf_folder_candidate(snapshot, "hf_models", entry)
        return
    if not _could_be_repo_id(entry):  # a path: downloading it makes no sense
        yield Candidate("transformers", path, "hf_models", entry, [], error=(
            f"no such folder or file: {path}; check the path in hf_models"))
        return
    yield Candidate("transformers", path, "hf_models", entry, [], error=(
        f"{entry!r} is neither a folder nor in the Hugging Face cache ({hf_cache_dir()}); "
        f"download it first (huggingface-cli download {entry}) or give its folder"))


def _could_be_repo_id(entry: str) -> bool:
    """Whether ``entry`` has the shape of a Hub repo id (``org/name``), not of a path."""
    parts = entry.split("/")
    return len(parts) == 2 and all(re.fullmatch(r"[\w.-]+", p) and p not in (".", "..") for p in parts)


def _stat_key(candidate: Candidate, allow_pickle: bool) -> _StatKey | None:
    if candidate.kind == "gguf":
        files = candidate.files
    else:
        try:
            files = sorted(p for p in candidate.path.iterdir() if p.is_file())
        except OSError:
            return None
    stats = []
    for path in files:
        try:
            st = path.stat()
        except OSError:
            return None
        stats.append((str(path), st.st_size, st.st_mtime_ns))
    return (candidate.kind, tuple(stats), allow_pickle)


def _real(path: Path) -> str:
    try:
        return os.path.realpath(path)
    except (OSError, RuntimeError):
        return str(path)


def _unique(name: str, source: str, used: set[str]) -> str:
    if name not in used:
        return name
    candidate = f"{name}@{source}"
    n = 2
    while candidate in used:
        candidate = f"{name}@{source}-{n}"
        n += 1
    return candidate
