"""Which hosts are loopback: the one rule for the metrics endpoint, the UI and the server."""

from __future__ import annotations

import pytest

from zwaif_fallback.net import is_loopback


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost",
                                  "LOCALHOST", " 127.0.0.1 "])
def test_loopback_hosts(host):
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "example.com", "localhost.evil",
                                  ""])
def test_other_hosts_are_not_loopback(host):
    assert not is_loopback(host)
