"""Network addresses: which hosts only this machine can reach.

The metrics endpoint, the web UI and the OpenAI-compatible server listen on loopback
unless a person asks otherwise (and, for the UI, sets a login): they all decide with
``is_loopback``.
"""

from __future__ import annotations

import ipaddress

__all__ = ["is_loopback"]


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an IP address, "[::1]" or "localhost", spaces around allowed) is
    loopback; any other name is not, since it may resolve to anything."""
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
