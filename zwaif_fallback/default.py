"""``try_fallbacks(request)``: the failover chain for a host that wants one function to call.

Z-WAIF's ``API/api_controller.py`` already calls ``try_fallbacks(fallback_request)`` and
reads ``fallback_response["choices"][0]["message"]["content"]``; importing this function
in place of its own module is the whole integration. The manager behind it is made on the
first call, from the environment and the settings file, and lives as long as the process.
"""

from __future__ import annotations

import atexit
import threading
from typing import Any

from .manager import FallbackManager

__all__ = ["default_manager", "try_fallbacks"]

_lock = threading.Lock()
_manager: FallbackManager | None = None


def default_manager() -> FallbackManager:
    """The process's shared manager, made on first use (settings from the environment and
    the settings file) and closed when the interpreter exits."""
    global _manager
    with _lock:
        if _manager is None:
            _manager = FallbackManager()
            atexit.register(_manager.close)
        return _manager


def try_fallbacks(request: dict[str, Any]) -> dict[str, Any]:
    """Answer an OpenAI chat-completions request on the default manager.

    Returns:
        A ``chat.completion`` dict, or an OpenAI error object when nothing could answer;
        it never raises (see ``FallbackManager.chat_completion``).
    """
    try:
        manager = default_manager()
    except Exception as exc:  # even a broken environment must not crash the host's call site
        from .completions import error_object

        return error_object(exc)
    return manager.chat_completion(request)
