"""Envoy while picker is down, in every body mode x failure mode (``docs/failure-modes.md``).

A client-supplied ``x-gateway-destination-endpoint`` must never reach the address it
names (here a "secret" HTTP server on loopback, and Envoy's own admin port), and the
client must get an OpenAI-style JSON error, whether ext_proc fails open or closed. With
picker up, normal routing, picker's own error bodies and the model server's responses
are unchanged by the header strip and the local-reply mappers.
"""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import yaml

from bench.stack.envoy import DESTINATION, SERVED, picker_config
from bench.stack.gateway import MODEL, Stack
from bench.stack.procs import ROOT, Procs, envoy_binary, free_port
from tests.e2e.test_gateway import post_or_get

SECRET = b"secret: you should never see this"


class _Secret(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []  # every request that reached it, across the module

    def _answer(self) -> None:
        self.hits.append(f"{self.command} {self.path}")
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        self.send_response(200)
        self.send_header("content-length", str(len(SECRET)))
        self.end_headers()
        self.wfile.write(SECRET)

    do_GET = do_POST = _answer

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def secret() -> Iterator[str]:
    """A loopback server no request through Envoy may reach; yields its ``ip:port``."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Secret)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def request(
    url: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    return post_or_get(url, body, headers)


def openai_error(headers: dict[str, str], body: bytes) -> dict[str, Any]:
    """The ``error`` object of an OpenAI-style error body (asserting its shape)."""
    assert headers.get("content-type", "").startswith("application/json"), (headers, body)
    error: dict[str, Any] = orjson.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"]
    return error


CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.mark.parametrize("failure_mode_allow", [False, True], ids=["fail-closed", "fail-open"])
@pytest.mark.parametrize("body_mode", ["BUFFERED", "FULL_DUPLEX_STREAMED"])
def test_picker_down_spoofed_destination_never_reached(
    secret: str, body_mode: str, failure_mode_allow: bool
) -> None:
    port, admin, nobody = free_port(), free_port(), free_port()  # nothing listens on nobody
    cfg = picker_config(
        port, nobody, admin, request_body_mode=body_mode, failure_mode_allow=failure_mode_allow
    )
    before = len(_Secret.hits)
    with Procs() as procs:
        procs.start_envoy("envoy", cfg, port, admin)
        url = f"http://127.0.0.1:{port}"
        # Fail-open in FULL_DUPLEX_STREAMED races the gRPC failure against the body, so
        # several tries; body-less GETs always fail open.
        for _ in range(8):
            for target in (secret, f"127.0.0.1:{admin}"):
                for body in (CHAT, None):
                    path = "/v1/chat/completions" if body else "/stats"
                    headers = {DESTINATION: target, SERVED: target}
                    status, hdrs, raw = request(url + path, body, headers)
                    assert status == 503, (status, raw)
                    assert SECRET not in raw and b"server.uptime" not in raw
                    error = openai_error(hdrs, raw)
                    assert (error["code"], error["param"]) == ("service_unavailable", None)
    assert _Secret.hits[before:] == []


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    """One sim pod behind picker (fail-open), plus a pod picker believes ready but is dead."""
    dead = f"127.0.0.1:{free_port()}"
    with Stack(
        pods=1,
        time_scale=20.0,
        pool_models=[MODEL],
        picker_config={"scrape": {"enabled": False}},  # the dead pod stays routable
        extra_pools=[{"name": "dead", "models": ["dead-model"], "endpoints": [dead]}],
        envoy_options={"failure_mode_allow": True},
    ) as st:
        yield st


def test_routing_picker_errors_and_upstream_bodies_pass_unchanged(
    stack: Stack, secret: str
) -> None:
    before = len(_Secret.hits)
    status, headers, _ = request(stack.url + "/v1/chat/completions", CHAT, {DESTINATION: secret})
    assert status == 200 and headers["x-sim-pod"] == stack.pod_addresses[0]
    # picker's own ImmediateResponse: its JSON, not the local-reply mappers' body
    status, headers, raw = request(stack.url + "/v1/chat/completions", {**CHAT, "model": "nope"})
    assert status == 404 and "x-sim-pod" not in headers
    error = openai_error(headers, raw)
    assert (error["code"], error["param"]) == ("model_not_found", "model")
    # the model server's own error response, untouched
    status, headers, raw = request(stack.url + "/v1/completions", {**CHAT, "max_tokens": 0})
    assert status == 400 and "x-sim-pod" in headers
    assert orjson.loads(raw)["error"]["code"] == 400  # the simulator's (vLLM's) int code
    assert _Secret.hits[before:] == []


def test_unreachable_pod_gives_json_error(stack: Stack) -> None:
    status, headers, raw = request(
        stack.url + "/v1/chat/completions", {**CHAT, "model": "dead-model"}
    )
    assert status == 503
    error = openai_error(headers, raw)
    assert error["code"] == "upstream_error" and "connect" in error["message"]


def test_picker_stopped_after_serving(stack: Stack, secret: str) -> None:
    """Last in this module: stops the stack's picker. Envoy had a live connection to it."""
    picker = next(p for name, p in stack.procs.children if name == "picker")
    stack.procs.stop(picker)
    before = len(_Secret.hits)
    for body in (CHAT, None):
        path = "/v1/chat/completions" if body else "/v1/models"
        status, headers, raw = request(stack.url + path, body, {DESTINATION: secret})
        assert status == 503 and SECRET not in raw, (status, raw)
        assert openai_error(headers, raw)["code"] == "service_unavailable"
    assert _Secret.hits[before:] == []


def test_shipped_config_is_the_rendered_one_and_valid() -> None:
    rendered = subprocess.run(
        [sys.executable, "-m", "bench.stack.envoy"],
        cwd=ROOT,
        capture_output=True,
        check=True,
        text=True,
    ).stdout
    shipped = ROOT / "deploy" / "envoy.yaml"
    assert shipped.read_text() == rendered, "re-render: python -m bench.stack.envoy"
    hcm = yaml.safe_load(rendered)["static_resources"]["listeners"][0]["filter_chains"][0]
    filters = [f["name"] for f in hcm["filters"][0]["typed_config"]["http_filters"]]
    assert filters.index("envoy.filters.http.header_mutation") < filters.index(
        "envoy.filters.http.ext_proc"
    )
    out = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(shipped)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
