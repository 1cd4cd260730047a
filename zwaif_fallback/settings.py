"""Settings: ranges, environment names and atomic JSON persistence.

Precedence, highest first: explicit arguments, environment (``FALLBACK_*``, and
``API_FALLBACK_MODEL`` as an alias of ``preferred_model``), the settings file,
defaults. The file holds only what a person saved; the environment is never
written into it.
"""

from __future__ import annotations

import contextvars
import difflib
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, PrivateAttr, SecretStr, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from .errors import InvalidSettings
from .files import expanded
from .settings_env import ENV_PREFIX, MODEL_ALIAS_ENV, EnvWithAlias, env_name_set
from .settings_fields import Folder, NameList, OriginList, SomePath, Url, UrlList, field_problem
from .settings_file import (
    file_signature,
    load_file,
    locked,
    read_file_quietly,
    set_aside_if_corrupt,
    to_json,
    write_atomically,
)

__all__ = ["FallbackSettings", "SettingsOrigin"]

log = logging.getLogger(__name__)

DEFAULT_SETTINGS_FILE = Path("fallback_settings.json")
# VRAM every load leaves free on each GPU. The estimate comes within 1.3% of NVML's
# per-process peak (56 loads on an H100), up to ~300 MiB short for a 24 GiB plan; the
# rest is for the desktop and for the main LLM's own growth. llama.cpp's --fit keeps 1 GiB.
VRAM_MARGIN_MB = 512

#: Fields that describe where settings live; they are never written to the file.
_NOT_SAVED = frozenset({"settings_file"})

SettingsOrigin = str  # "argument" | "environment" | "file" | "default"


# Filled by the settings-file source while a FallbackSettings is being built, read
# back by __init__: pydantic-settings gives sources no other way to report.
_load_report: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "zwaif_fallback_settings_load_report", default=None
)


class FallbackSettings(BaseSettings):
    """Every setting of zwaif-fallback, validated.

    ``FallbackSettings()`` reads the environment and the settings file;
    keyword arguments override both. Instances are not changed in place:
    ``saved(...)`` and ``reset()`` write the file and return a new instance.

    Raises:
        InvalidSettings: an argument or environment value is out of range.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="ignore",
        validate_default=False,
        frozen=True,
    )

    timeout: float = Field(30.0, ge=5, le=120, description="seconds the primary may take, retries included")
    max_retries: int = Field(3, ge=1, le=10, description="attempts on the primary for retryable errors")
    auto_switch: bool = Field(True, description="on a local model failure, go on to the next best model")
    vram_monitoring: bool = Field(True, description="sample VRAM in the background")
    auto_optimize_vram: bool = Field(False, description="pick the optimal model at start and on VRAM change")
    models_dir: SomePath = Field(Path("models"), description="where models are discovered")
    download_to: Literal["models_dir", "hf_cache"] = Field(
        "models_dir", description="where pull puts a model: models_dir, or the Hugging Face cache")
    hf_models: NameList = Field(default_factory=list, description="extra HF model folders or ids")
    characters_dir: Folder = Field("", description="text-generation-webui's folder: the personas of the "
                                                "characters its hosts name, for local models and remotes")
    primary_url: Url = Field("", description="base URL of the main OpenAI-compatible API")
    primary_api: Literal["openai", "ollama"] = Field(
        "openai", description="what the main API speaks: openai (a /v1 URL), or ollama (Ollama's own API)")
    primary_model: str = Field("", description="model name sent to the main API")
    primary_api_key: SecretStr = Field(SecretStr(""), description="API key of the main API")
    remote_urls: UrlList = Field(default_factory=list, description="more servers tried before local models")
    preferred_model: str = Field("", description="the local model to load first")
    cors_origins: OriginList = Field(default_factory=list, description="web pages, beyond this "
                                     "machine's own, that may call serve from a browser (* for any)")
    n_ctx: int = Field(4096, ge=512, le=131072, description="context size for loads and estimates")
    vram_margin_mb: int = Field(VRAM_MARGIN_MB, ge=0, le=16384,
                                description="VRAM left free on each GPU by every load, MiB")
    keep_alive: float = Field(600.0, ge=0, le=86400, description="seconds before an idle model is unloaded")
    monitor_duration: int = Field(60, ge=10, le=300, description="default monitoring session, seconds")
    settings_file: SomePath = Field(DEFAULT_SETTINGS_FILE, description="where saved settings live")
    data_dir: SomePath = Field(Path(".zwaif_fallback"), description="SQLite history and caches")
    scan_system_stores: bool = Field(True, description="also discover the HF, LM Studio and Ollama stores")
    allow_pickle: bool = Field(False, description="allow HF folders whose weights are pickle files")
    trust_remote_code: bool = Field(False, description="allow HF models that ship their own code")

    _arguments: frozenset[str] = PrivateAttr(default=frozenset())
    _file_fields: frozenset[str] = PrivateAttr(default=frozenset())
    _problems: list[str] = PrivateAttr(default_factory=list)
    _signature: Any = PrivateAttr(default=None)
    _file_read: bool = PrivateAttr(default=True)

    def __init__(self, **values: Any) -> None:
        unknown = sorted(set(values) - set(type(self).model_fields))
        if unknown:
            raise InvalidSettings(_unknown_message(unknown))
        token = _load_report.set({})
        try:
            super().__init__(**values)
            report = _load_report.get() or {}
        except ValidationError as exc:
            raise _translate(exc, arguments=set(values)) from None
        finally:
            _load_report.reset(token)
        self._arguments = frozenset(values)
        self._file_fields = frozenset(report.get("fields", ()))
        self._problems = list(report.get("problems", ()))
        self._signature = report.get("signature")
        self._file_read = report.get("file_read", True)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, EnvWithAlias(settings_cls), _JsonFileSource(settings_cls))

    # -- where values came from --------------------------------------------

    @property
    def problems(self) -> list[str]:
        """What went wrong while reading the settings file (empty when nothing did)."""
        return list(self._problems)

    def folder_problems(self) -> list[str]:
        """A models or characters folder that someone set and that is not there: each command
        would go on as if it held nothing, and say nothing (the file system now, not cached)."""
        problems = []
        for name, holds in (("models_dir", "models"), ("characters_dir", "personas")):
            value = getattr(self, name)
            if self.origin(name) == "default" or not value:
                continue
            folder = expanded(str(value))
            if not folder.is_dir():
                what = "is a file" if folder.exists() else "does not exist"
                problems.append(f"{name} {folder} {what}: no {holds} are read from there; check the path")
        return problems

    def origin(self, field: str) -> SettingsOrigin:
        """Where ``field``'s value came from: argument, environment, file or default."""
        if field in self._arguments:
            return "argument"
        if env_name_set(field):
            return "environment"
        if field in self._file_fields:
            return "file"
        return "default"

    def env_name(self, field: str) -> str:
        """The environment variable that sets ``field`` (the alias, when that is what is set)."""
        own = ENV_PREFIX + field.upper()
        if field == "preferred_model" and own not in os.environ and MODEL_ALIAS_ENV in os.environ:
            return MODEL_ALIAS_ENV
        return own

    def arguments(self) -> dict[str, Any]:
        """The explicit arguments this instance was built with."""
        return {name: getattr(self, name) for name in self._arguments}

    # -- persistence --------------------------------------------------------

    def saved(self, **changes: Any) -> FallbackSettings:
        """Validate ``changes``, write them to the settings file, and return the new settings.

        Raises:
            InvalidSettings: a value is out of range, the field is unknown, or it is
                pinned by an argument or the environment. Nothing is written then.
            StorageError: the settings file cannot be written.
        """
        self.check(**changes)
        with locked(self.settings_file):  # another process's save in between would be lost
            stored = read_file_quietly(self.settings_file)
            for name, value in changes.items():
                stored[name] = to_json(validate_field(name, value))
            write_atomically(self.settings_file, stored)
        log.info("saved settings %s to %s", sorted(changes), self.settings_file)
        return type(self)(**self._argument_values())

    def check(self, **changes: Any) -> None:
        """Refuse ``changes`` as ``saved`` would, writing nothing: before a reset that they
        follow, so that a bad value does not leave the saved settings forgotten.

        Raises:
            InvalidSettings: a value is out of range, the field is unknown, or it is
                pinned by an argument or the environment.
        """
        problems = self._check_changes(changes)
        if problems:
            raise InvalidSettings("; ".join(problems), problems=problems)

    def reset(self, fields: Sequence[str] | None = None) -> FallbackSettings:
        """Forget the saved values of ``fields``, or of every field (the file keeps keys this
        version does not know). Forgetting every field moves a corrupt file aside (``.bak``),
        and the new settings' ``problems`` say where.

        Raises:
            InvalidSettings: a field is unknown; nothing is written then.
            StorageError: the settings file cannot be written.
        """
        known = type(self).model_fields
        unknown = sorted(set(fields or ()) - set(known))
        if unknown:
            raise InvalidSettings(_unknown_message(unknown))
        forgotten = set(known if fields is None else fields)
        with locked(self.settings_file):
            moved = set_aside_if_corrupt(self.settings_file) if fields is None else None
            stored = read_file_quietly(self.settings_file)
            kept = {k: v for k, v in stored.items() if k not in forgotten}
            write_atomically(self.settings_file, kept)
        log.info("reset %s in %s", "settings" if fields is None else sorted(forgotten), self.settings_file)
        fresh = type(self)(**self._argument_values())
        if moved:
            fresh._problems.append(moved)
        return fresh

    def reloaded(self) -> FallbackSettings | None:
        """The settings read again, when the settings file changed since these were read (another
        process saved it); None when it did not. A file that cannot be read now (an editor
        half-way through saving it, an empty one) keeps these: a chat must not lose the main
        API to a moment's typo; the problem is logged, once."""
        signature = file_signature(self.settings_file)
        if signature == self._signature or (signature is not None and signature[1] == 0):
            return None
        fresh = type(self)(**self._argument_values())
        if fresh._file_read:
            log.info("settings file %s changed: read it again", self.settings_file)
            return fresh
        self._signature = signature  # not read again until it changes once more
        log.warning("settings file %s changed but cannot be read (%s); keeping the settings read "
                    "before", self.settings_file, "; ".join(fresh.problems))
        return None

    def public_dict(self) -> dict[str, Any]:
        """Every field as JSON-ready values, with the API key masked."""
        data = self.model_dump(mode="json")
        key = self.primary_api_key.get_secret_value()
        data["primary_api_key"] = "********" if key else ""
        return data

    def _argument_values(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._arguments}

    def _check_changes(self, changes: Mapping[str, Any]) -> list[str]:
        fields = type(self).model_fields
        problems = []
        unknown = sorted(set(changes) - set(fields))
        if unknown:
            problems.append(_unknown_message(unknown))
        for name, value in changes.items():
            if name not in fields:
                continue
            if name in _NOT_SAVED:
                problems.append(f"{name} cannot be saved in the settings file; "
                                f"set {self.env_name(name)} or pass --settings-file")
                continue
            origin = self.origin(name)
            if origin == "environment":
                problems.append(f"{name} is pinned by the environment variable "
                                f"{self.env_name(name)}; unset it to change {name} here")
                continue
            if origin == "argument":
                problems.append(f"{name} is pinned by an explicit argument; "
                                f"drop that argument to change {name} here")
                continue
            try:
                validate_field(name, value)
            except InvalidSettings as exc:
                problems.extend(exc.problems)
        return problems


def validate_field(name: str, value: Any) -> Any:
    """Validate one value for field ``name`` and return it converted.

    Raises:
        InvalidSettings: with a message that names the field and its range.
    """
    info = FallbackSettings.model_fields[name]
    adapter = _adapter(name)
    try:
        return adapter.validate_python(value)
    except ValidationError as exc:
        reason = exc.errors()[0].get("msg", "invalid value")
        raise InvalidSettings(field_problem(name, info, value, reason)) from None


_adapters: dict[str, TypeAdapter[Any]] = {}


def _adapter(name: str) -> TypeAdapter[Any]:
    if name not in _adapters:
        info = FallbackSettings.model_fields[name]
        annotation: Any = info.annotation
        if info.metadata:
            params = (annotation, *info.metadata)
            annotation = Annotated[params]
        _adapters[name] = TypeAdapter(annotation)
    return _adapters[name]


def _unknown_message(names: list[str]) -> str:
    fields = sorted(FallbackSettings.model_fields)
    close = [match for n in names for match in difflib.get_close_matches(n.lower(), fields, n=1)]
    meant = f" (did you mean {', '.join(close)}?)" if close else ""
    return f"unknown setting {', '.join(repr(n) for n in names)}{meant}; settings are: {', '.join(fields)}"


def _translate(exc: ValidationError, *, arguments: set[str]) -> InvalidSettings:
    problems = []
    for error in exc.errors():
        name = str(error["loc"][0]) if error.get("loc") else "?"
        info = FallbackSettings.model_fields.get(name)
        where = "" if name in arguments or info is None else f" (from {ENV_PREFIX}{name.upper()})"
        if info is None:
            problems.append(f"{name}: {error.get('msg')}")
        else:
            problems.append(field_problem(name, info, error.get("input"), error["msg"]) + where)
    return InvalidSettings("; ".join(problems), problems=problems)


def _settings_path(given: Any) -> Path:
    """The settings file an argument or the environment names, read as the field reads it
    (quotes from cmd.exe's ``set``, ``~``), so that a save and the next load use one file."""
    if not given:
        return DEFAULT_SETTINGS_FILE
    try:
        return Path(validate_field("settings_file", given))
    except InvalidSettings:
        return Path(given)  # the field's own validation says what is wrong with it


class _JsonFileSource(PydanticBaseSettingsSource):
    """The saved settings file. A broken file never stops the host: it is reported."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads the whole file at once

    def __call__(self) -> dict[str, Any]:
        report = _load_report.get()
        if report is None:
            report = {}
        report.setdefault("problems", [])
        path = _settings_path(self.current_state.get("settings_file"))
        report["signature"] = file_signature(path)  # before the read: a change after it is seen
        before = len(report["problems"])
        stored = load_file(path, report["problems"])
        report["file_read"] = len(report["problems"]) == before
        values = {}
        for name, value in stored.items():
            if name in _NOT_SAVED or name not in self.settings_cls.model_fields:
                continue
            if name in self.current_state:
                continue  # an argument or the environment wins
            try:
                values[name] = validate_field(name, value)
            except InvalidSettings as exc:
                message = f"{path}: ignored {exc}; using the default"
                report["problems"].append(message)
                log.warning("%s", message)
        report["fields"] = set(values)
        return values
