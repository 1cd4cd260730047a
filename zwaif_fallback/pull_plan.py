"""Which files a pull fetches: one GGUF, every part of a split GGUF, or the files a
transformers model needs from a repo that has safetensors and no GGUF.

Only weights in formats that cannot run code are fetched (.gguf, .safetensors), with the
JSON, tokenizer and template files transformers reads beside them; never pickle weights
(.bin, .pt, .pth, .pkl, .ckpt: loading one can run code) and never .py files (remote code).
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Literal

from ._model import Model
from .errors import HubFileNotFound, InvalidSettings
from .hub import Hub
from .hub_models import HubModel, RepoListing, choose_ggufs, curated, parse_spec, split_parts
from .locations import PICKLE_SUFFIXES

__all__ = ["ALLOWED_SUFFIXES", "TRANSFORMERS_FILES", "PullPlan", "check_file_type", "plan_pull"]

ALLOWED_SUFFIXES = (".gguf", ".safetensors")
SAFETENSORS_INDEX = "model.safetensors.index.json"
#: what transformers reads beside the weights (all data: JSON, a sentencepiece model, a template)
TRANSFORMERS_FILES = frozenset({
    "config.json", "generation_config.json", SAFETENSORS_INDEX, "tokenizer.json",
    "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model", "added_tokens.json",
    "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json",
})


class PullPlan(Model):
    """The files of one model, in the order they are made visible (config.json last: a
    folder becomes a model for discovery only when it is there)."""

    kind: Literal["gguf", "transformers"]
    files: list[HubModel]
    folder: str | None = None  # a transformers model's folder name under models_dir

    @property
    def label(self) -> str:
        first = self.files[0]
        return first.repo if self.kind == "transformers" else first.label


def check_file_type(name: str) -> None:
    """Refuse a file that is not model weights in a format that cannot run code.

    Raises:
        InvalidSettings: a pickle file, or anything but .gguf and .safetensors.
    """
    lower = name.lower()
    if lower.endswith(PICKLE_SUFFIXES):
        raise InvalidSettings(f"{name!r} is a pickle file, which can run code when it is loaded: "
                              "pull fetches only .gguf and .safetensors files")
    if not lower.endswith(ALLOWED_SUFFIXES):
        raise InvalidSettings(f"{name!r} is not a .gguf or .safetensors file: pull fetches model "
                              "weights only, never code or other files")


def plan_pull(spec: str | HubModel, hub: Hub) -> PullPlan:
    """The files ``spec`` stands for: ``REPO/FILE.gguf`` (with every part, for a split file),
    a URL of a .gguf, a curated file's name, ``REPO/FILE.safetensors`` or a repo id (its GGUF
    in the common quantizations, Q4_K_M first; or, for a repo without GGUF files, its
    transformers model).

    Raises:
        InvalidSettings: none of these, or not an allowed file type.
        HubOffline, HubUnavailable, HubFileNotFound, HubAccessDenied: listing a repo failed.
    """
    model = spec if isinstance(spec, HubModel) else _parse(spec)
    if model.file.lower().endswith(".safetensors") and model.repo:
        return _transformers_plan(hub.list_repo(model.repo, revision=model.revision), hub)
    if not model.file:
        listing = hub.list_repo(model.repo, revision=model.revision)
        ggufs = choose_ggufs(listing)
        if not ggufs:
            return _transformers_plan(listing, hub)
        model = ggufs[0]
    check_file_type(model.file)
    return _checked(PullPlan(kind="gguf", files=split_parts(model)))


def _checked(plan: PullPlan) -> PullPlan:
    """The plan, once no file name could land outside its folder: names come from the Hub's
    listing and a repo's index, and on Windows a backslash, a drive or ``..`` would."""
    for model in plan.files:
        parts = PurePosixPath(model.file).parts
        if any(part in ("..", ".") or "\\" in part or ":" in part for part in parts) or \
                model.file.startswith("/"):
            raise InvalidSettings(f"refusing {model.file!r} from {model.repo or 'the Hub'}: the "
                                  "name could write outside the models folder")
    return plan


def _parse(spec: str) -> HubModel:
    text = spec.strip()
    parts = text.split("/")
    known = [m for m in curated() if "/" not in text and m.file.lower() == text.lower()]
    if known:
        return known[0]
    if text.startswith(("https://", "http://")) or len(parts) >= 3:
        check_file_type(parts[-1])
        if text.lower().endswith(".safetensors") and len(parts) >= 3 and "://" not in text:
            return HubModel(repo="/".join(parts[:2]), file="/".join(parts[2:]))
    return parse_spec(text)


def _transformers_plan(listing: RepoListing, hub: Hub) -> PullPlan:
    """A repo's transformers model: its safetensors weights (the shards its index names,
    when it has one) and the files in ``TRANSFORMERS_FILES``, at the top of the repo."""
    top = [name for name in listing.files if "/" not in name]
    weights = [name for name in top if name.lower().endswith(".safetensors")]
    if not weights or "config.json" not in top:
        pickles = [name for name in top if name.lower().endswith(PICKLE_SUFFIXES)]
        why = (f"only pickle weights ({', '.join(pickles[:3])}), which can run code when loaded"
               if pickles else "no .gguf and no .safetensors weights with a config.json")
        raise HubFileNotFound(f"not found: the repo {listing.repo} holds {why}; pick a repo with "
                              "GGUF files (often named ...-GGUF) or with safetensors weights")
    revision = listing.revision

    def file(name: str) -> HubModel:
        return HubModel(repo=listing.repo, file=name, revision=revision, license=listing.license)

    if SAFETENSORS_INDEX in top:
        index = hub.read_json(file(SAFETENSORS_INDEX))
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        named = sorted({str(v) for v in weight_map.values()}) if isinstance(weight_map, dict) else []
        missing = [name for name in named if name not in top]
        if not named or missing:
            raise HubFileNotFound(f"not found: {listing.repo}'s {SAFETENSORS_INDEX} names "
                                  f"{', '.join(missing) or 'no weights'}, which the repo does not "
                                  "hold; the repo is incomplete, pick another revision or repo")
        weights = named
    elif "model.safetensors" in top:
        weights = ["model.safetensors"]  # not a second copy in another layout beside it
    extras = sorted(name for name in top if name in TRANSFORMERS_FILES and name != "config.json")
    names = [*weights, *extras, "config.json"]
    return _checked(PullPlan(kind="transformers", files=[file(n) for n in names],
                             folder=PurePosixPath(listing.repo).name))
