"""What discovery keeps of Kubernetes objects, and which endpoints a pod stands for.

Only the few fields routing needs are kept (``PodInfo``, ``PoolSpec``), never the raw
objects: a pod's JSON is kilobytes (managed fields, container specs), its ``PodInfo``
a few hundred bytes.

An endpoint is a pod that is Ready (its ``Ready`` condition is ``True``), has no
``deletionTimestamp`` and has an IP, once per pool target port (``PodIP:port``; IPv6 as
``[ip]:port``). The pod annotation ``llm-d.ai/active-ports`` (or the older
``inference.networking.k8s.io/active-ports``), a comma-separated port list, narrows that
to the target ports it names; a pod that names none of them has no endpoint. This is
the reference endpoint picker's rule (llm-d-router ``pkg/epp/datastore``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from picker.datalayer.discovery.selector import Selector, from_labels

ACTIVE_PORTS = "llm-d.ai/active-ports"
LEGACY_ACTIVE_PORTS = "inference.networking.k8s.io/active-ports"
MAX_TARGET_PORTS = 8  # the InferencePool v1 CRD's maxItems

POOL_GROUP = "inference.networking.k8s.io"
# API group → version of InferencePool picker reads. v1alpha2 (the experimental group)
# has ``spec.selector`` as a plain map and one ``spec.targetPortNumber``.
POOL_VERSIONS = {POOL_GROUP: "v1", "inference.networking.x-k8s.io": "v1alpha2"}


class InvalidObject(ValueError):
    """An object without the fields picker needs (skipped, with a log line)."""


@dataclass(frozen=True, slots=True)
class PodInfo:
    name: str
    ip: str
    ready: bool
    deleting: bool
    labels: Mapping[str, str]
    active_ports: frozenset[int] | None  # None: no annotation, every target port

    @property
    def host(self) -> str:
        """The pod IP as the host part of ``host:port`` (IPv6 in brackets)."""
        return f"[{self.ip}]" if ":" in self.ip else self.ip

    def endpoints(self, ports: tuple[int, ...]) -> tuple[str, ...]:
        """``ip:port`` per target port (active ones only); none unless ready."""
        if not self.ready or self.deleting or not self.ip:
            return ()
        host = self.host
        active = self.active_ports
        return tuple(f"{host}:{p}" for p in ports if active is None or p in active)

    def ranks(self, ports: tuple[int, ...]) -> dict[str, int]:
        """Each endpoint's index in ``ports`` (the EPP's ``-rank-<i>`` of its name)."""
        host = self.host
        return {f"{host}:{p}": i for i, p in enumerate(ports)}


@dataclass(frozen=True, slots=True)
class PoolSpec:
    name: str
    selector: Selector
    target_ports: tuple[int, ...]
    deleting: bool = False


def _mapping(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidObject(f"{where} is not a map")
    return {str(k): str(v) for k, v in value.items()}


def _metadata(obj: Any) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise InvalidObject("object is not a map")
    meta = obj.get("metadata")
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
        raise InvalidObject("object has no metadata.name")
    return meta


def object_name(obj: Any) -> str:
    name: str = _metadata(obj)["name"]
    return name


def resource_version(obj: Any) -> str:
    """``metadata.resourceVersion`` ("" when absent; bookmarks have no name)."""
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    rv = meta.get("resourceVersion") if isinstance(meta, dict) else None
    return rv if isinstance(rv, str) else ""


def parse_ports(text: str) -> frozenset[int]:
    """An active-ports annotation: the valid port numbers it lists."""
    out: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if part.isdigit() and 0 < int(part) < 65536:
            out.add(int(part))
    return frozenset(out)


def pod_info(obj: Any) -> PodInfo:
    meta = _metadata(obj)
    status = obj.get("status") or {}
    if not isinstance(status, dict):
        raise InvalidObject("pod status is not a map")
    ready = False
    for cond in status.get("conditions") or ():
        if isinstance(cond, dict) and cond.get("type") == "Ready":
            ready = cond.get("status") == "True"
            break
    annotations = _mapping(meta.get("annotations"), "metadata.annotations")
    ports_text = annotations.get(ACTIVE_PORTS, annotations.get(LEGACY_ACTIVE_PORTS))
    ip = status.get("podIP")
    return PodInfo(
        name=meta["name"],
        ip=ip if isinstance(ip, str) else "",
        ready=ready,
        deleting=meta.get("deletionTimestamp") is not None,
        labels=_mapping(meta.get("labels"), "metadata.labels"),
        active_ports=None if ports_text is None else parse_ports(ports_text),
    )


def check_ports(ports: list[Any], where: str) -> tuple[int, ...]:
    """Distinct valid ports in order; 1 to 8 of them."""
    out: list[int] = []
    for p in ports:
        if isinstance(p, bool) or not isinstance(p, int) or not 0 < p < 65536:
            raise InvalidObject(f"{where}: {p!r} is not a port number")
        if p not in out:
            out.append(p)
    if not 0 < len(out) <= MAX_TARGET_PORTS:
        raise InvalidObject(f"{where}: 1 to {MAX_TARGET_PORTS} ports, not {len(out)}")
    return tuple(out)


def pool_spec(obj: Any) -> PoolSpec:
    """An InferencePool, v1 (``selector.matchLabels``, ``targetPorts[].number``) or
    v1alpha2 (``selector`` map, ``targetPortNumber``), told apart by ``apiVersion``."""
    meta = _metadata(obj)
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        raise InvalidObject("InferencePool has no spec")
    selector = spec.get("selector")
    if str(obj.get("apiVersion", "")).endswith("/v1alpha2"):
        labels = _mapping(selector, "spec.selector")
        ports = check_ports([spec.get("targetPortNumber")], "spec.targetPortNumber")
    else:
        if not isinstance(selector, dict):
            raise InvalidObject("spec.selector is not a map")
        labels = _mapping(selector.get("matchLabels"), "spec.selector.matchLabels")
        raw = spec.get("targetPorts")
        if not isinstance(raw, list):
            raise InvalidObject("spec.targetPorts is not a list")
        numbers = [p.get("number") if isinstance(p, dict) else p for p in raw]
        ports = check_ports(numbers, "spec.targetPorts")
    if not labels:
        raise InvalidObject("the pool's selector is empty (it would select every pod)")
    try:
        selector_ = from_labels(labels)
    except ValueError as e:
        raise InvalidObject(str(e)) from None
    return PoolSpec(
        name=meta["name"],
        selector=selector_,
        target_ports=ports,
        deleting=meta.get("deletionTimestamp") is not None,
    )
