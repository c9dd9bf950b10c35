"""SIGTERM: picker stops taking streams, finishes open ones, exits within the deadline."""

from __future__ import annotations

import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import yaml
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from bench.stack.procs import ROOT, free_port
from tests.e2e.h2client import DATA, END_STREAM, GOAWAY, RST_STREAM, H2Client, frame, grpc
from tests.e2e.test_hostile_h2 import routed_stream


def start(tmp: Path, drain: float) -> tuple[subprocess.Popen[str], int]:
    port = free_port()
    cfg = {
        "grpc_host": "127.0.0.1",
        "grpc_port": port,
        "metrics_port": -1,
        "scrape": {"enabled": False},
        "drain_timeout": drain,
        "models": {"*": [f"127.0.0.1:{free_port()}"]},
    }
    path = tmp / "picker.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.Popen(
        [sys.executable, "-m", "picker", "serve", "--config", str(path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("picker ready"):
            return proc, port
    raise AssertionError("picker did not start")


def response_end() -> bytes:
    r = pb.ProcessingRequest()
    h = r.response_headers.headers.headers.add()
    h.key, h.raw_value = ":status", b"200"
    r.response_headers.end_of_stream = True
    return grpc(r.SerializeToString())


def test_sigterm_drains_open_streams_then_exits(tmp_path: Path) -> None:
    proc, port = start(tmp_path, drain=20.0)
    c = H2Client(port)
    routed_stream(c, 1)
    time.sleep(0.3)
    assert any(f.sid == 1 for f in c.frames)  # routed: picker answered the request
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert c.goaway_code() == 0
    goaway = c.of_type(GOAWAY)[0]
    assert struct.unpack(">I", goaway.payload[:4])[0] == 1  # last stream it will process
    # No new streams on this connection, and no new connections.
    c.send(c.headers(3))
    time.sleep(0.2)
    assert [f.sid for f in c.of_type(RST_STREAM)] == [3]
    time.sleep(0.3)
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        refused = False
    except OSError:
        refused = True
    assert refused
    assert proc.poll() is None  # still draining: stream 1 is open
    # The response ends: the last stream finishes, picker exits long before the deadline.
    c.send(frame(DATA, END_STREAM, 1, response_end()))
    assert proc.wait(10) == 0
    assert time.monotonic() - t0 < 10
    c.close()


def test_drain_deadline_cuts_streams_that_do_not_end(tmp_path: Path) -> None:
    proc, port = start(tmp_path, drain=1.0)
    c = H2Client(port)
    routed_stream(c, 1)
    time.sleep(0.3)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    assert 0.9 < time.monotonic() - t0 < 5
    assert proc.stdout is not None
    assert "drain deadline: 1 stream(s) cut" in proc.stdout.read()
    c.close()
