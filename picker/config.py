"""Configuration: a YAML file plus command-line overrides.

Two ways to name endpoints, both accepted in one file::

    # short form: model ID (or "*") → endpoints
    models:
      meta-llama/Llama-3.1-8B-Instruct: ["10.0.0.1:8000", "10.0.0.2:8000"]
      "*": ["10.0.0.3:8000"]

    # full form: pools with adapters and the model-server type
    pools:
      - name: llama
        models: [meta-llama/Llama-3.1-8B-Instruct]
        adapters: [sql-lora]
        model_server: vllm          # vllm | sglang | trtllm (metric names)
        endpoints: ["10.0.0.1:8000", "10.0.0.2:8000"]

    # or from the cluster (docs/kubernetes-discovery.md): an InferencePool's pods ...
    discovery:
      pool_name: vllm-llama3-8b-instruct
      pool_namespace: default
    # ... or the pods a label selector matches, on given ports
    discovery:
      endpoint_selector: app=vllm
      endpoint_target_ports: [8000]

See README.md for every key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from picker.datalayer.datastore import Datastore, Endpoint, Pool
from picker.datalayer.discovery.objects import POOL_VERSIONS
from picker.datalayer.discovery.selector import parse as parse_selector
from picker.datalayer.objectives import ObjectiveStore, RewriteRule, criticality_of, static_rewrites
from picker.request.types import Criticality
from picker.transport.tls import TLSConfig


@dataclass
class PoolConfig:
    name: str
    endpoints: list[str]
    models: list[str] = field(default_factory=lambda: ["*"])
    adapters: list[str] = field(default_factory=list)
    model_server: str = "vllm"
    # Metric-name overrides for this pool, e.g. {"waiting": "my_queue_len"}; see
    # picker.datalayer.metrics_text.MetricNames for the keys.
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class ScrapeConfig:
    interval: float = 0.05  # the shortest time between two polls of one pod
    # The observation budget (picker/datalayer/budget.py): polls may cost each pod at most
    # this share of its time, from its measured scrape cost; 0: poll every ``interval``.
    budget: float = 0.01
    max_interval: float = 2.0  # the longest time between two regular polls
    early_after: int = 8  # requests sent since the last scrape that call for an early poll
    timeout: float = 1.0
    stale_after: float = 1.0
    max_failures: int = 3
    path: str = "/metrics"
    enabled: bool = True


@dataclass
class SaturationConfig:
    """A pod is saturated past either threshold; a pool when all its candidates are."""

    queue_threshold: int = 8
    kv_threshold: float = 0.9
    retry_after_seconds: int = 1


@dataclass
class FlowControlConfig:
    """Hold non-critical requests while the pool is saturated (see picker/flow.py)."""

    enabled: bool = False
    max_queue: int = 1000
    max_wait_seconds: float = 5.0


@dataclass
class TransportConfig:
    """Limits of the native gRPC server (see SECURITY.md)."""

    max_concurrent_streams: int = 1000  # per connection (SETTINGS_MAX_CONCURRENT_STREAMS)
    max_header_bytes: int = 64 * 1024  # one header block, CONTINUATION frames included
    resets_per_second: float = 200.0  # client stream resets per connection, sustained
    resets_burst: float = 1000.0  # ... and in a burst; past them: GOAWAY
    handshake_timeout: float = 10.0  # seconds to complete the HTTP/2 preface
    idle_timeout: float = 300.0  # a connection without streams this long is closed
    max_connections: int = 1024


_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


@dataclass
class DiscoveryConfig:
    """Endpoints from the cluster (``picker.datalayer.discovery``); off when both
    ``pool_name`` and ``endpoint_selector`` are empty."""

    pool_name: str = ""  # an InferencePool (--pool-name) ...
    pool_namespace: str = ""  # "": $NAMESPACE, the kubeconfig's or service account's, "default"
    pool_group: str = "inference.networking.k8s.io"
    endpoint_selector: str = ""  # ... or a label selector (--endpoint-selector) ...
    endpoint_target_ports: list[int] = field(default_factory=list)  # ... and its ports
    api_server: str = ""  # "": in-cluster or kubeconfig (see discovery.kubeconfig)
    kubeconfig: str = ""
    model_server: str = "vllm"  # the pods' metric names, as pools[].model_server
    metrics: dict[str, Any] = field(default_factory=dict)  # as pools[].metrics
    max_pods: int = 10_000  # pods kept at most; more are ignored (logged)
    max_event_bytes: int = 4 << 20  # one watch event line
    watch_timeout: int = 300  # seconds the API server keeps one watch open

    @property
    def enabled(self) -> bool:
        return bool(self.pool_name or self.endpoint_selector)

    @property
    def datastore_pool(self) -> str:
        """The name of the datastore pool discovery fills (a metric label)."""
        return self.pool_name or "endpoint-selector"

    def validate(self) -> None:
        if self.pool_name and self.endpoint_selector:
            raise ValueError("give either --pool-name or --endpoint-selector, not both")
        if self.pool_name and not _DNS_NAME.match(self.pool_name):
            raise ValueError(f"--pool-name {self.pool_name!r} is not a valid object name")
        if self.pool_namespace and not _DNS_LABEL.match(self.pool_namespace):
            raise ValueError(f"--pool-namespace {self.pool_namespace!r} is not a valid namespace")
        if self.pool_name and self.pool_group not in POOL_VERSIONS:
            raise ValueError(
                f"--pool-group {self.pool_group!r} is not supported; "
                f"known: {', '.join(sorted(POOL_VERSIONS))}"
            )
        if self.endpoint_selector:
            if parse_selector(self.endpoint_selector).empty:
                raise ValueError("--endpoint-selector is empty")
            ports = self.endpoint_target_ports
            if not 1 <= len(ports) <= 8:
                raise ValueError("--endpoint-target-ports needs 1 to 8 port numbers")
            for port in ports:
                if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
                    raise ValueError(f"--endpoint-target-ports: {port!r} is not a port number")
        if self.max_pods < 1 or self.max_event_bytes < 1024 or self.watch_timeout < 1:
            raise ValueError("discovery: max_pods, max_event_bytes, watch_timeout out of range")


@dataclass
class PeersConfig:
    """Active-active replicas sharing pick records (``picker.datalayer.peers``); off when
    ``publish``, ``endpoints`` and ``selector`` are all empty. Needs pyzmq
    (``picker[peers]``)."""

    publish: str = ""  # this replica's XPUB bind address, e.g. tcp://0.0.0.0:5570
    endpoints: list[str] = field(default_factory=list)  # every replica's (itself may be in)
    # ... or found in the cluster (needs discovery): the label selector of picker's own
    # pods in its namespace; each one's publisher is tcp://<podIP>:<publish's port>.
    selector: str = ""
    id: str = ""  # this replica's name ("": hostname:pid); a new process under a peer's
    # name replaces it at once (a restart), so two live replicas must not share one
    # Records made in one event-loop turn share one send at its end; > 0: they wait this
    # long for more (fewer sends, later news: concurrent decisions elsewhere herd).
    flush_interval: float = 0.0
    batch_bytes: int = 64 * 1024  # ... or until this many bytes are pending
    state_interval: float = 0.5  # own in-flight table + heartbeat
    peer_timeout: float = 3.0  # a peer silent this long is gone: its load is dropped
    replay_bytes: int = 4 << 20  # recent picks replayed to a new peer (bounded)
    warmup: float = 2.0  # readiness waits this long at most for the peers' replays
    max_message_bytes: int = 1 << 20  # larger messages close the connection (ZMQ)
    max_peers: int = 64

    @property
    def enabled(self) -> bool:
        return bool(self.publish or self.endpoints or self.selector)

    @property
    def port(self) -> int:
        """The TCP port of ``publish`` (0 when it is not ``tcp://host:port``)."""
        m = re.match(r"^tcp://.+:(\d+)$", self.publish)
        return int(m.group(1)) if m else 0

    def validate(self) -> None:
        for e in ([self.publish] if self.publish else []) + list(self.endpoints):
            if not isinstance(e, str) or not re.match(r"^(tcp|ipc|inproc)://\S+$", e):
                raise ValueError(f"peers: {e!r} is not a ZMQ endpoint (tcp://host:port)")
        if min(self.flush_interval, self.warmup) < 0 or self.state_interval <= 0:
            raise ValueError("peers: intervals must be >= 0 (state_interval > 0)")
        if self.peer_timeout <= self.state_interval:
            raise ValueError("peers: peer_timeout must exceed state_interval")
        # A batch is flushed past batch_bytes: it may hold one largest record more.
        if self.batch_bytes < 1024 or self.max_message_bytes < 2 * self.batch_bytes + (80 << 10):
            raise ValueError("peers: batch_bytes >= 1 KiB, max_message_bytes >= 2 x it + 80 KiB")
        if self.replay_bytes < 0 or self.max_peers < 1:
            raise ValueError("peers: replay_bytes >= 0, max_peers >= 1")
        if self.selector:
            if self.endpoints:
                raise ValueError("peers: endpoints or selector, not both")
            if not 0 < self.port < 65536:
                raise ValueError("peers.selector needs publish tcp://host:port (a fixed port)")
            parse_selector(self.selector)  # a bad selector fails here, at start


def parse_ports(text: str) -> list[int]:
    """``8000,8001`` → [8000, 8001] (duplicates dropped); ValueError otherwise."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit() or not 0 < int(part) < 65536:
            raise ValueError(f"{part!r} is not a port number")
        if int(part) not in out:
            out.append(int(part))
    return out


@dataclass
class Config:
    pools: list[PoolConfig] = field(default_factory=list)
    scheduler: dict[str, Any] | None = None  # see picker.scheduling.profile
    # "native": picker's own HTTP/2 gRPC server; "grpcio": grpc.aio
    transport: str = "native"
    grpc_host: str = "0.0.0.0"
    grpc_port: int = 9002
    # gRPC health alone, plaintext (the EPP's 9003); -1: off (health stays on grpc_port too).
    grpc_health_port: int = -1
    metrics_host: str = "0.0.0.0"
    metrics_port: int = 9090
    max_body_bytes: int = 16 * 2**20
    # Prompt characters per token, for the token estimate of a prompt given as text.
    chars_per_token: float = 4.0
    # On SIGTERM: seconds to let open streams finish (not ready, no new streams) first.
    drain_timeout: float = 30.0
    scrape: ScrapeConfig = field(default_factory=ScrapeConfig)
    transport_limits: TransportConfig = field(default_factory=TransportConfig)
    tls: TLSConfig = field(default_factory=TLSConfig)
    saturation: SaturationConfig = field(default_factory=SaturationConfig)
    flow_control: FlowControlConfig = field(default_factory=FlowControlConfig)
    discovery: DiscoveryConfig = field(default_factory=DiscoveryConfig)
    peers: PeersConfig = field(default_factory=PeersConfig)  # active-active replicas
    # model ID, adapter or objective name → criticality (a name, or an objective's
    # integer priority); see docs/objectives.md
    criticality: dict[str, Criticality] = field(default_factory=dict)
    default_criticality: Criticality = Criticality.STANDARD
    # model ID → weighted target models (docs/objectives.md)
    model_rewrites: dict[str, RewriteRule] = field(default_factory=dict)

    def check_discovery(self) -> None:
        """Discovery settings are valid and fit with the static pools (if any)."""
        d = self.discovery
        if not d.enabled:
            return
        d.validate()
        for p in self.pools:
            if p.name == d.datastore_pool:
                raise ValueError(f"pool {p.name!r} is both configured and discovered")
            if "*" in p.models:
                raise ValueError(
                    f"pool {p.name!r} serves '*', as the discovered pool does: give it "
                    "its model names"
                )

    def datastore(self) -> Datastore:
        pools = [
            Pool(
                name=p.name,
                endpoints=[
                    Endpoint(address=normalize_address(a), pool=p.name) for a in p.endpoints
                ],
                models=frozenset(p.models),
                adapters=frozenset(p.adapters),
                model_server=p.model_server,
            )
            for p in self.pools
        ]
        d = self.discovery
        if d.enabled:
            # The endpoint picker routes any model its pool serves: the pool serves "*".
            pools.append(Pool(name=d.datastore_pool, endpoints=[], model_server=d.model_server))
        return Datastore(pools, ObjectiveStore(self.model_rewrites))


def normalize_address(addr: str) -> str:
    """``host:port`` with a numeric port; raises ValueError otherwise."""
    addr = addr.strip()
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"endpoint {addr!r} is not host:port")
    return f"{host}:{int(port)}"


def parse_criticality(value: str | int) -> Criticality:
    """A criticality name, or an InferenceObjective priority (an integer)."""
    if isinstance(value, int):
        return criticality_of(value)
    try:
        return Criticality[value.strip().upper()]
    except KeyError:
        raise ValueError(
            f"criticality {value!r} is not one of critical, standard, sheddable, or a priority"
        ) from None


def _dataclass_from(cls: type[Any], data: dict[str, Any], where: str) -> Any:
    known = set(cls.__dataclass_fields__)
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}; known: {sorted(known)}")
    return cls(**data)


def load_config(path: str | Path | None = None, data: dict[str, Any] | None = None) -> Config:
    """Reads a config file (or an already-parsed mapping) into a ``Config``."""
    if data is None:
        data = {}
        if path is not None:
            loaded = yaml.safe_load(Path(path).read_text())
            if loaded is not None and not isinstance(loaded, dict):
                raise ValueError(f"{path}: top level must be a mapping")
            data = loaded or {}
    data = dict(data)
    cfg = Config()
    for name, eps in dict(data.pop("models", {}) or {}).items():
        cfg.pools.append(PoolConfig(name=str(name), endpoints=list(eps), models=[str(name)]))
    for i, p in enumerate(data.pop("pools", []) or []):
        cfg.pools.append(_dataclass_from(PoolConfig, dict(p), f"pools[{i}]"))
    if "scheduler" in data:
        cfg.scheduler = dict(data.pop("scheduler") or {})
    if "scrape" in data:
        cfg.scrape = _dataclass_from(ScrapeConfig, dict(data.pop("scrape")), "scrape")
    if "transport_limits" in data:
        cfg.transport_limits = _dataclass_from(
            TransportConfig, dict(data.pop("transport_limits")), "transport_limits"
        )
    if "tls" in data:
        cfg.tls = _dataclass_from(TLSConfig, dict(data.pop("tls")), "tls")
        cfg.tls.files()  # both or neither of cert_file / key_file
    if "saturation" in data:
        cfg.saturation = _dataclass_from(
            SaturationConfig, dict(data.pop("saturation")), "saturation"
        )
    if "discovery" in data:
        raw = dict(data.pop("discovery") or {})
        if isinstance(raw.get("endpoint_target_ports"), str):
            raw["endpoint_target_ports"] = parse_ports(raw["endpoint_target_ports"])
        cfg.discovery = _dataclass_from(DiscoveryConfig, raw, "discovery")
    if "peers" in data:
        cfg.peers = _dataclass_from(PeersConfig, dict(data.pop("peers") or {}), "peers")
        cfg.peers.endpoints = [str(e) for e in cfg.peers.endpoints or []]
        cfg.peers.validate()
    if "flow_control" in data:
        cfg.flow_control = _dataclass_from(
            FlowControlConfig, dict(data.pop("flow_control")), "flow_control"
        )
    for model, crit in dict(data.pop("criticality", {}) or {}).items():
        cfg.criticality[str(model)] = parse_criticality(
            crit if isinstance(crit, int) else str(crit)
        )
    if "model_rewrites" in data:
        cfg.model_rewrites = static_rewrites(dict(data.pop("model_rewrites") or {}))
    if "default_criticality" in data:
        cfg.default_criticality = parse_criticality(str(data.pop("default_criticality")))
    for key in ("grpc_host", "metrics_host", "transport"):
        if key in data:
            setattr(cfg, key, str(data.pop(key)))
    for key in ("grpc_port", "grpc_health_port", "metrics_port", "max_body_bytes"):
        if key in data:
            setattr(cfg, key, int(data.pop(key)))
    if "drain_timeout" in data:
        cfg.drain_timeout = float(data.pop("drain_timeout"))
    if "chars_per_token" in data:
        cfg.chars_per_token = float(data.pop("chars_per_token"))
        if cfg.chars_per_token <= 0:
            raise ValueError("chars_per_token must be > 0")
    if data:
        raise ValueError(f"unknown config keys: {sorted(data)}")
    for p in cfg.pools:
        for a in p.endpoints:
            normalize_address(a)
    cfg.check_discovery()
    return cfg
