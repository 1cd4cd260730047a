"""The base of every result type: a pydantic model whose schema is built on first use.

Building a validator costs a few milliseconds a class; deferring it keeps
``import zwaif_fallback`` cheap for hosts that import it in their call path.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

__all__ = ["Model"]


class Model(BaseModel):
    model_config = ConfigDict(defer_build=True)
