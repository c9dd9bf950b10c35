"""A complete local setup on loopback: simulated vLLM pods, picker, and a real Envoy.

Used by ``make demo``, the end-to-end tests and the benchmarks::

    with Stack(pods=4) as stack:          # sim pods + picker + Envoy (ext_proc)
        url = stack.url                   # send OpenAI requests here

``target`` selects what sits in front of the pods: ``"picker"`` (Envoy + ext_proc +
ORIGINAL_DST), ``"round_robin"`` or ``"least_request"`` (Envoy's own balancer).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Any

import yaml

from bench.stack.envoy import cluster_config, picker_config
from bench.stack.plugins import entry_point_dist
from bench.stack.procs import ROOT, Procs, free_port

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

    def __post_init__(self) -> None:
        self.procs = Procs(keep_logs=self.keep_logs)
        self.port = 0
        self.picker_grpc_port = 0
        self.picker_metrics_port = 0

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
        self.procs.start("sim", argv + self.sim_args, ready="ready")

    def start_picker(self) -> None:
        self.picker_grpc_port = free_port()
        self.picker_metrics_port = free_port()
        cfg: dict[str, Any] = {
            "grpc_host": "127.0.0.1",
            "grpc_port": self.picker_grpc_port,
            "metrics_host": "127.0.0.1",
            "metrics_port": self.picker_metrics_port,
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
        path = self.procs.dir / "picker.yaml"
        path.write_text(yaml.safe_dump(cfg))
        env: dict[str, str] = {}
        if self.plugins:
            where = entry_point_dist(self.procs.dir / "plugins", self.plugins)
            env["PYTHONPATH"] = os.pathsep.join(
                [str(where), str(ROOT), os.environ.get("PYTHONPATH", "")]
            )
        self.procs.start(
            "picker",
            [sys.executable, "-m", "picker", "serve", "--config", str(path)],
            ready="picker ready",
            port=self.picker_grpc_port,
            env=env,
        )

    def start(self) -> None:
        self.start_pods()
        self.port = free_port()
        admin = free_port()
        if self.target == "picker":
            self.start_picker()
            options = {"picker_tls": self.tls, **self.envoy_options}
            envoy_cfg = picker_config(self.port, self.picker_grpc_port, admin, **options)
        elif self.target in ("round_robin", "least_request", "random"):
            envoy_cfg = cluster_config(self.port, admin, self.pod_addresses, self.target.upper())
        else:
            raise ValueError(f"unknown target {self.target!r}")
        self.procs.start_envoy("envoy", envoy_cfg, self.port, admin, self.envoy_concurrency)
