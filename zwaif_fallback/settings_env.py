"""Where a setting's value in the environment comes from: ``FALLBACK_<NAME>`` for each field,
and Z-WAIF's own ``API_FALLBACK_MODEL`` for ``preferred_model``, so that a host's existing
variable names the fallback model without a second one."""

from __future__ import annotations

import os
from typing import Any

from pydantic_settings import EnvSettingsSource

__all__ = ["ENV_PREFIX", "MODEL_ALIAS_ENV", "EnvWithAlias", "env_name_set"]

ENV_PREFIX = "FALLBACK_"
MODEL_ALIAS_ENV = "API_FALLBACK_MODEL"


def _alias_value() -> str | None:
    """API_FALLBACK_MODEL when it names a model. Z-WAIF's env_example.txt ships it empty
    (``API_FALLBACK_MODEL=``): that chooses nothing, so it does not pin preferred_model."""
    value = next((v for k, v in os.environ.items() if k.upper() == MODEL_ALIAS_ENV), None)
    return value if value is not None and value.strip() else None


def env_name_set(field: str) -> bool:
    """Whether the environment sets ``field`` (its alias counts for preferred_model)."""
    if field == "preferred_model" and _alias_value() is not None:
        return True
    wanted = (ENV_PREFIX + field).lower()
    return any(key.lower() == wanted for key in os.environ)


class EnvWithAlias(EnvSettingsSource):
    """The FALLBACK_* environment, plus API_FALLBACK_MODEL for preferred_model."""

    def __call__(self) -> dict[str, Any]:
        values = super().__call__()
        if "preferred_model" not in values:
            alias = _alias_value()
            if alias is not None:
                values["preferred_model"] = alias
        return values
