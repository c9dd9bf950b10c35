"""Ports that a reconnecting client on this host can never take.

A socket that keeps reconnecting to a loopback port nobody listens on (a ZMQ SUB to a
killed picker replica, or to a restarting simulator's KV-event publisher) gets a new
ephemeral local port each time; once that local port equals the destination port, TCP
connects the socket to itself, and the port is taken when the server comes back. Ports
below the kernel's ephemeral range are never handed out as local ports, so servers that
come and go bind those.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def ephemeral_low() -> int:
    try:
        return int(_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def stable_ports(n: int, consecutive: bool = False, attempts: int = 200) -> list[int]:
    """``n`` free loopback ports below the ephemeral range (``consecutive``: in a row)."""
    high = ephemeral_low() - n
    low = min(20000, high - 1000)
    out: list[int] = []
    for _ in range(attempts):
        if consecutive:
            base = random.randint(low, high)
            if all(_free(base + i) for i in range(n)):
                return list(range(base, base + n))
            continue
        port = random.randint(low, high)
        if port not in out and _free(port):
            out.append(port)
            if len(out) == n:
                return out
    raise RuntimeError(f"no {n} free ports below {high + n}")
