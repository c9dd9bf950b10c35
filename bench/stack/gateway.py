"""A complete local setup on loopback: simulated vLLM pods, picker, and a real Envoy.

Used by ``make demo``, the end-to-end tests and the benchmarks::

    with Stack(pods=4) as stack:          # sim pods + picker + Envoy (ext_proc)
        url = stack.url                   # send OpenAI requests here

``target`` selects what sits in front of the pods: ``"picker"`` (Envoy + ext_proc +
ORIGINAL_DST), ``"round_robin"`` or ``"least_request"`` (Envoy's own balancer).

``replicas`` > 1 starts that many picker processes, all in Envoy's ext_proc cluster
(round-robin, health-checked, failover: ``envoy.replicas_cluster``), each deciding on
its own. ``sharing`` says what they share: ``none``; ``picks`` (pick records over ZMQ,
``picker.datalayer.peers``: every replica publishes and subscribes to all); or
``kv_events`` (every replica subscribes to every pod's KV events and matches prefixes
exactly: ``precise`` is that plugin's entry, by default the simulator's, see
``bench.stack.simprecise``; ``kv_events`` maps each pod to its publisher).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import yaml

from bench.stack.envoy import cluster_config, picker_config, report_upstream
from bench.stack.plugins import entry_point_dist
from bench.stack.ports import stable_ports
from bench.stack.procs import ROOT, Procs, free_port
from bench.stack.simprecise import (
    SIM_PRECISE,
    SIM_PRECISE_ENTRY,
    kv_event_ports,
    sim_precise_entry,
    with_kv_events,
)

SHARING = ("none", "picks", "kv_events")

MODEL = "meta-llama/Llama-3.1-8B-Instruct"


@dataclass
class Stack:
    pods: int = 4
    target: str = "picker"
    model: str = MODEL
    time_scale: float = 1.0
    speeds: list[float] | None = None
    sim_args: list[str] = field(default_factory=list)
    picker_config: dict[str, Any] = field(default_factory=dict)
    envoy_options: dict[str, Any] = field(default_factory=dict)
    backend: str = "sim"  # "sim" or "echo" (a trivial backend, for overhead runs)
    pod_addresses: list[str] = field(default_factory=list)  # external pods: start none
    envoy_concurrency: int = 1
    keep_logs: bool = False
    pool_models: list[str] = field(default_factory=lambda: ["*"])
    pool_adapters: list[str] = field(default_factory=list)
    extra_pools: list[dict[str, Any]] = field(default_factory=list)
    # Out-of-tree plugins for picker, as entry points: type → "module:attr"
    plugins: dict[str, str] = field(default_factory=dict)
    tls: bool = True  # picker serves TLS (self-signed), Envoy dials it with ALPN h2
    replicas: int = 1  # picker processes behind Envoy (active-active)
    sharing: str = "none"  # none | picks | kv_events (see the module doc)
    kv_events: dict[str, str] = field(default_factory=dict)  # pod -> tcp:// publisher
    precise: dict[str, Any] | None = None  # the kv_events plugin entry (None: the sim's)

    def __post_init__(self) -> None:
        if self.sharing not in SHARING or self.replicas < 1:
            raise ValueError(f"sharing must be one of {SHARING}, replicas >= 1")
        self.procs = Procs(keep_logs=self.keep_logs)
        self.port = 0
        self.admin_port = 0
        self.picker_grpc_port = 0  # the first replica's
        self.picker_metrics_port = 0
        self.picker_grpc_ports: list[int] = []  # every replica's
        self.picker_metrics_ports: list[int] = []
        self.peer_endpoints: list[str] = []  # sharing=picks: every replica's publisher

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Stack:
        try:
            self.start()
        except BaseException:
            self.procs.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.procs.close()

    def start_pods(self) -> None:
        if self.pod_addresses:
            return
        ports = [free_port() for _ in range(self.pods)]
        self.pod_addresses = [f"127.0.0.1:{p}" for p in ports]
        if self.backend == "echo":
            argv = [sys.executable, "-m", "bench.stack.echo_server"]
            for p in ports:
                argv += ["--port", str(p)]
            self.procs.start("echo", argv, ready="echo ready")
            return
        argv = [
            sys.executable,
            "-m",
            "bench.sim",
            "--pods",
            str(self.pods),
            "--host",
            "127.0.0.1",
            "--ports",
            ",".join(map(str, ports)),
            "--model",
            self.model,
            "--time-scale",
            str(self.time_scale),
        ]
        if self.speeds:
            argv += ["--speed", ",".join(map(str, self.speeds))]
        if self.sharing == "kv_events" and not self.kv_events:
            base = kv_event_ports(self.pods)
            argv += ["--kv-events-port", str(base)]
            self.kv_events = {
                a: f"tcp://127.0.0.1:{base + i}" for i, a in enumerate(self.pod_addresses)
            }
        self.procs.start("sim", argv + self.sim_args, ready="ready")

    def start_picker(self) -> None:
        n = self.replicas
        self.picker_grpc_ports = [free_port() for _ in range(n)]
        self.picker_metrics_ports = [free_port() for _ in range(n)]
        self.picker_grpc_port = self.picker_grpc_ports[0]
        self.picker_metrics_port = self.picker_metrics_ports[0]
        if self.sharing == "picks":
            self.peer_endpoints = [f"tcp://127.0.0.1:{p}" for p in stable_ports(n)]
        for i in range(n):  # all at once: each waits (bounded) for the others' replays
            self.start_replica(i, ready=False)
        for i in range(n):
            self.wait_replica(i)

    def wait_replica(self, i: int, timeout: float = 60.0) -> None:
        """Waits until replica ``i`` logs that it is ready (its latest start)."""
        name, proc = self.replica_name(i), self.replica(i)
        deadline = time.monotonic() + timeout
        while "picker ready" not in self.procs.log(name):  # (a start truncates the log)
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with {proc.returncode}:\n{self.procs.log(name)[-4000:]}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} not ready:\n{self.procs.log(name)[-4000:]}")
            time.sleep(0.05)

    def replica_config(self, i: int) -> dict[str, Any]:
        """Replica ``i``'s picker config (ports, pools, sharing, then ``picker_config``)."""
        cfg: dict[str, Any] = {
            "grpc_host": "127.0.0.1",
            "grpc_port": self.picker_grpc_ports[i],
            "metrics_host": "127.0.0.1",
            "metrics_port": self.picker_metrics_ports[i],
            "pools": [
                {
                    "name": "pool",
                    "models": self.pool_models,
                    "adapters": self.pool_adapters,
                    "endpoints": self.pod_addresses,
                },
                *self.extra_pools,
            ],
        }
        if self.tls:
            cfg["tls"] = {"enabled": True}
        cfg.update(self.picker_config)
        if self.sharing == "picks":
            cfg["peers"] = {
                "publish": self.peer_endpoints[i],
                "endpoints": self.peer_endpoints,  # itself included: ignored
                "id": self.replica_name(i),
                **cfg.get("peers", {}),
            }
        elif self.sharing == "kv_events":
            cfg["scheduler"] = with_kv_events(cfg.get("scheduler"), self.precise_entry())
        return cfg

    @staticmethod
    def replica_name(i: int) -> str:
        return "picker" if i == 0 else f"picker-{i}"

    def precise_entry(self) -> dict[str, Any]:
        if self.precise is not None:
            return self.precise
        if not self.kv_events:
            raise ValueError("sharing=kv_events needs the pods' KV-event publishers")
        return sim_precise_entry(self.kv_events)

    def start_replica(self, i: int, ready: bool = True) -> subprocess.Popen[bytes]:
        """Starts replica ``i`` (again, after a kill: same ports, same peers)."""
        name = self.replica_name(i)
        path = self.procs.dir / f"{name}.yaml"
        path.write_text(yaml.safe_dump(self.replica_config(i)))
        plugins = dict(self.plugins)
        if self.sharing == "kv_events" and self.precise is None:
            plugins[SIM_PRECISE] = SIM_PRECISE_ENTRY
        env: dict[str, str] = {}
        if plugins:
            where = entry_point_dist(self.procs.dir / "plugins", plugins)
            env["PYTHONPATH"] = os.pathsep.join(
                [str(where), str(ROOT), os.environ.get("PYTHONPATH", "")]
            )
        return self.procs.start(
            name,
            [sys.executable, "-m", "picker", "serve", "--config", str(path)],
            ready="picker ready" if ready else None,
            port=self.picker_grpc_ports[i] if ready else None,
            env=env,
        )

    def replica(self, i: int) -> subprocess.Popen[bytes]:
        """The running process of replica ``i`` (the last one started under its name)."""
        name = self.replica_name(i)
        return [p for n, p in self.procs.children if n == name][-1]

    def start(self) -> None:
        self.start_pods()
        self.port = free_port()
        admin = self.admin_port = free_port()
        if self.target == "picker":
            self.start_picker()
            options = {"picker_tls": self.tls, **self.envoy_options}
            envoy_cfg = picker_config(
                self.port,
                self.picker_grpc_port,
                admin,
                picker_ports=self.picker_grpc_ports,
                **options,
            )
        elif self.target in ("round_robin", "least_request", "random"):
            envoy_cfg = cluster_config(self.port, admin, self.pod_addresses, self.target.upper())
        else:
            raise ValueError(f"unknown target {self.target!r}")
        self.procs.start_envoy(
            "envoy", report_upstream(envoy_cfg), self.port, admin, self.envoy_concurrency
        )
        if self.target == "picker" and self.replicas > 1:
            for i in range(self.replicas):
                self.wait_envoy_healthy(i)

    def envoy_health(self) -> dict[int, str]:
        """Envoy's health flags of each picker replica, by its gRPC port."""
        url = f"http://127.0.0.1:{self.admin_port}/clusters"
        with urllib.request.urlopen(url, timeout=5) as r:
            text = r.read().decode()
        out: dict[int, str] = {}
        for line in text.splitlines():
            parts = line.split("::")
            if len(parts) == 4 and parts[0] == "picker" and parts[2] == "health_flags":
                out[int(parts[1].rsplit(":", 1)[1])] = parts[3]
        return out

    def wait_envoy_healthy(self, i: int, timeout: float = 15.0) -> None:
        """Waits until Envoy's health checks pass on replica ``i`` (before that, Envoy
        sends it no streams unless it panics)."""
        port = self.picker_grpc_ports[i]
        deadline = time.monotonic() + timeout
        while self.envoy_health().get(port) != "healthy":
            if time.monotonic() > deadline:
                raise TimeoutError(f"Envoy never saw replica {i} healthy: {self.envoy_health()}")
            time.sleep(0.05)
