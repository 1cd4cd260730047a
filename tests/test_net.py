"""Which hosts are loopback (the one rule for the metrics endpoint, the UI and the server), and
which serve processes a request says it came through."""

from __future__ import annotations

import threading

import pytest

from zwaif_fallback.net import (
    INSTANCE_HEADER,
    MAX_HOPS,
    instance_id,
    instance_ids,
    is_loopback,
    own_headers,
    passing_through,
    start_for_request,
)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost",
                                  "LOCALHOST", " 127.0.0.1 "])
def test_loopback_hosts(host):
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "example.com", "localhost.evil",
                                  ""])
def test_other_hosts_are_not_loopback(host):
    assert not is_loopback(host)


A, B, C = (f"{i:032x}" for i in (10, 11, 12))  # ids as serve makes them


def test_a_request_says_which_serves_it_came_through_and_this_one_last():
    assert own_headers() == {INSTANCE_HEADER: instance_id()}
    with passing_through((A, B)):
        assert own_headers() == {INSTANCE_HEADER: f"{A}, {B}, {instance_id()}"}
    assert own_headers() == {INSTANCE_HEADER: instance_id()}


def test_a_thread_started_for_the_request_sends_the_same_ids():
    seen: list[dict[str, str]] = []
    done = threading.Event()
    with passing_through((A,)):
        start_for_request(lambda: (seen.append(own_headers()), done.set()), "test")
    assert done.wait(10)
    assert seen == [{INSTANCE_HEADER: f"{A}, {instance_id()}"}]


def test_the_ids_are_read_from_every_instance_header_and_kept_to_the_last_few():
    name = INSTANCE_HEADER.lower().encode()
    headers = [(name, f"{A}, {B}".encode()), (b"accept", b"*/*"), (name, f" {C} ,,".encode())]
    assert instance_ids(headers) == (A, B, C)
    many = tuple(f"{i:032x}" for i in range(MAX_HOPS + 5))
    with passing_through(many):
        sent = own_headers()[INSTANCE_HEADER].split(", ")
    assert sent == [*many[-MAX_HOPS:], instance_id()]


def test_what_is_not_an_id_is_not_sent_on():
    # a byte httpx cannot encode would fail every request to the servers
    name = INSTANCE_HEADER.lower().encode()
    sent = "caf\u00e9, x, ".encode("latin-1") + A.upper().encode() + f", {A}".encode()
    assert instance_ids([(name, sent)]) == (A,)
