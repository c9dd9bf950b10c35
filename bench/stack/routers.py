"""Launching the Rust LLM routers from PyPI as comparison targets: vllm-router, sglang-router.

Install: ``pip install vllm-router sglang-router`` (each ships its Rust binary in the
wheel). Each is started as a plain HTTP router over a list of worker URLs::

    vllm-router --host 127.0.0.1 --port P --worker-urls http://a http://b --policy POLICY
    python -m sglang_router.launch_router --host 127.0.0.1 --port P \\
        --worker-urls http://a http://b --policy POLICY

``POLICY``: ``cache_aware`` | ``power_of_two`` | ``round_robin`` | ``random`` (both);
vllm-router also has ``consistent_hash``, ``sticky_least_loaded`` and ``kv_aware``.

What they ask the workers (observed against the simulator, a logging proxy in front):

* vllm-router 0.1.17: ``GET /health`` on each worker at start (waits until healthy,
  then every 60 s). With ``cache_aware`` it also sends, for *every* request and to
  *every* worker, ``POST /v1/completions/render`` (or ``/v1/chat/completions/render``)
  and then ``POST /tokenize`` with the request body, before forwarding it; on 404 it
  falls back to routing on the text.
* sglang-router 0.3.2: first an HTTP/2 (h2c prior-knowledge) gRPC probe per worker,
  ``POST /sglang.grpc.scheduler.SglangScheduler/HealthCheck`` and
  ``POST /vllm.grpc.engine.VllmEngine/HealthCheck``; then over HTTP/1.1 ``GET /health``,
  ``GET /server_info`` → ``GET /get_server_info`` and ``GET /model_info`` →
  ``GET /get_model_info`` (404s are tolerated: the model is then "unknown").

Everything else (retries, circuit breakers, concurrency limits: 32768 in vllm-router,
none in sglang-router) is left at the routers' defaults.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from bench.stack.procs import Procs, free_port

ROUTERS = ("vllm-router", "sglang-router")
POLICIES = {
    "vllm-router": (
        "cache_aware",
        "power_of_two",
        "round_robin",
        "random",
        "consistent_hash",
        "sticky_least_loaded",
    ),
    "sglang-router": ("cache_aware", "power_of_two", "round_robin", "random"),
}


def _venv_bin(name: str) -> str | None:
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else shutil.which(name)


def available(kind: str) -> bool:
    """Whether router ``kind`` is installed (its console script is on hand)."""
    return _venv_bin(kind) is not None


def router_argv(kind: str, policy: str, port: int, workers: list[str]) -> list[str]:
    """The command line that starts router ``kind`` on 127.0.0.1:``port``."""
    if kind not in ROUTERS:
        raise ValueError(f"unknown router {kind!r}; known: {ROUTERS}")
    if policy not in POLICIES[kind]:
        raise ValueError(f"{kind} has no policy {policy!r}; known: {POLICIES[kind]}")
    urls = [w if w.startswith("http") else f"http://{w}" for w in workers]
    common = ["--host", "127.0.0.1", "--port", str(port), "--policy", policy]
    common += ["--worker-urls", *urls]
    common += ["--log-level", "warn" if kind == "sglang-router" else "warning"]
    if kind == "vllm-router":
        exe = _venv_bin("vllm-router")
        if exe is None:
            raise FileNotFoundError("vllm-router not installed: pip install vllm-router")
        return [exe, *common]
    return [sys.executable, "-m", "sglang_router.launch_router", *common]


def start_router(procs: Procs, kind: str, policy: str, workers: list[str]) -> str:
    """Starts a router over ``workers`` (host:port) in ``procs``; returns its base URL."""
    port = free_port()
    procs.start(kind, router_argv(kind, policy, port, workers), port=port, timeout=60)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, procs, kind)
    return url


def wait_healthy(url: str, procs: Procs, name: str, timeout: float = 30.0) -> None:
    procs.wait_http_ok(url + "/health", name, timeout)
