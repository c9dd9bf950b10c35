"""The conformance test plugins' address handling."""

from __future__ import annotations

from picker.datalayer.datastore import Endpoint
from picker.scheduling.testing import allowed, from_env, parse_entries


def test_entries_normalize_ipv6_and_keep_ports() -> None:
    assert parse_entries(" 10.0.0.1, 10.0.0.2:3002 ,,fd00::1,[fd00::2]:3000,[fd00::3]") == {
        "10.0.0.1",
        "10.0.0.2:3002",
        "[fd00::1]",
        "[fd00::2]:3000",
        "[fd00::3]",
    }


def test_bare_host_allows_every_port_and_host_port_only_that_one() -> None:
    entries = parse_entries("10.0.0.1,10.0.0.2:3002,fd00::1")
    assert allowed(Endpoint("10.0.0.1:3000"), entries)
    assert allowed(Endpoint("10.0.0.1:3002"), entries)
    assert allowed(Endpoint("10.0.0.2:3002"), entries)
    assert not allowed(Endpoint("10.0.0.2:3000"), entries)
    assert allowed(Endpoint("[fd00::1]:8000"), entries)
    assert not allowed(Endpoint("10.0.0.3:3000"), entries)


def test_env_flag() -> None:
    assert from_env({"ENABLE_REQ_HEADER_BASED_SCHEDULER_FOR_TESTING": "true"})
    assert not from_env({"ENABLE_REQ_HEADER_BASED_SCHEDULER_FOR_TESTING": "false"})
    assert not from_env({})
