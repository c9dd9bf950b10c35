"""The simulated vLLM pods of a comparison, shared by every target.

Between runs the pods must forget their KV caches and counters. If the simulator
answers ``POST /sim/reset`` with 200 on every pod they are reset in place and reused;
otherwise they are restarted (new processes, new ports) for each run.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from bench.procs import Procs, free_port
from bench.workloads import MODEL


@dataclass
class SimPods:
    pods: int = 4
    model: str = MODEL
    time_scale: float = 1.0
    speeds: list[float] | None = None
    sim_args: list[str] = field(default_factory=list)
    keep_logs: bool = False
    addresses: list[str] = field(default_factory=list)
    restarts: int = 0
    resets: int = 0

    def __post_init__(self) -> None:
        self.procs: Procs | None = None

    def argv(self, ports: list[int]) -> list[str]:
        argv = [sys.executable, "-m", "bench.sim", "--pods", str(self.pods)]
        argv += ["--host", "127.0.0.1", "--ports", ",".join(map(str, ports))]
        argv += ["--model", self.model, "--time-scale", str(self.time_scale)]
        if self.speeds:
            argv += ["--speed", ",".join(map(str, self.speeds))]
        return argv + self.sim_args

    def start(self) -> list[str]:
        self.stop()
        self.procs = Procs(keep_logs=self.keep_logs)
        ports = [free_port() for _ in range(self.pods)]
        self.procs.start("sim", self.argv(ports), ready="ready")
        self.addresses = [f"127.0.0.1:{p}" for p in ports]
        self.restarts += 1
        return self.addresses

    def fresh(self) -> list[str]:
        """Pods with empty caches: reset in place when the simulator can, else restarted."""
        if self.procs is not None and self.addresses and self.reset():
            self.resets += 1
            return self.addresses
        return self.start()

    def reset(self) -> bool:
        for addr in self.addresses:
            req = urllib.request.Request(f"http://{addr}/sim/reset", data=b"{}", method="POST")
            try:
                with urllib.request.urlopen(req, timeout=5) as r:
                    if r.status != 200:
                        return False
            except (urllib.error.URLError, OSError):
                return False
        return True

    def stop(self) -> None:
        if self.procs is not None:
            self.procs.close()
            self.procs = None

    def __enter__(self) -> SimPods:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
