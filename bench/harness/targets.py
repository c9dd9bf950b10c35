"""What sits in front of the pods in a run, started on free loopback ports and stopped after.

Target names (``--targets``):

* ``picker``              Envoy + ext_proc picker (``bench.stack.Stack``), with a
                          ``picker_config`` (default :data:`DEFAULT_PICKER_CONFIG`: the
                          built-in default profile, its predictions exposed).
* ``picker:weighted``     picker's previous default: the weighted sum of unitless
                          scores, polling every pod every 50 ms (no observation budget).
* ``picker:rr``           picker doing round-robin with scraping off: the floor of
                          picker's own path (Envoy + ext_proc, no observation).
* ``round_robin``         Envoy's ROUND_ROBIN over a static cluster of the pods.
* ``least_request``       Envoy's LEAST_REQUEST likewise.
* ``vllm-router:POLICY``  vllm-router (PyPI) over the pods' URLs; see ``bench.routers``.
* ``sglang-router:POLICY`` sglang-router (PyPI) likewise.
* ``url``                 an external base URL (``--url``); nothing is started.

Several picker replicas behind the one Envoy (active-active, ``bench.stack.gateway``):
any picker target with ``-<N>r`` and/or ``-<sharing>`` appended, sharing one of
``none`` (each replica on its own), ``picks`` (pick records between the replicas) or
``kv_events`` (every replica subscribes to every pod's KV events), e.g.
``picker-3r-picks``, ``picker-3r``, ``picker-kv_events``, ``picker:weighted-3r-picks``
(``bench.compare --replicas 1,3 --sharing none,picks,kv_events`` lists them for you).
"""

from __future__ import annotations

import contextlib
import re
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from bench.stack.gateway import Stack
from bench.stack.procs import Procs
from bench.stack.routers import ROUTERS, start_router
from picker.scheduling.profile import DEFAULT_SCHEDULER

ENVOY_TARGETS = ("picker", "round_robin", "least_request")

# picker as shipped (picker.scheduling.profile.DEFAULT_SCHEDULER), with the opt-in
# prediction header on, so the harness can report the prediction error.
# --picker-config replaces it.
DEFAULT_PICKER_CONFIG: dict[str, Any] = {
    "scheduler": {
        **DEFAULT_SCHEDULER,
        "plugins": [{"type": "predicted_latency", "parameters": {"expose": True}}],
    }
}
PICKER_VARIANTS: dict[str, dict[str, Any]] = {
    "weighted": {
        "scheduler": {
            "filters": ["lora"],
            "scorers": {
                "prefix": 3.0,
                "queue": 2.0,
                "kv_cache": 1.0,
                "lora_affinity": 1.0,
                "least_inflight": 1.0,
            },
        },
        "scrape": {"interval": 0.05, "budget": 0.0},
    },
    "rr": {"scheduler": {"scorers": {}, "picker": "round_robin"}, "scrape": {"enabled": False}},
}


SHARING = ("none", "picks", "kv_events")
_REPLICAS = re.compile(r"^(?P<base>picker(?::[\w.]+)?)(?:-(?P<n>\d+)r)?(?:-(?P<sharing>\w+))?$")


@dataclass(frozen=True)
class Target:
    kind: str  # picker | round_robin | least_request | vllm-router | sglang-router | url
    policy: str = ""
    url: str = ""
    replicas: int = 1  # picker only: processes behind Envoy
    sharing: str = "none"  # picker only: none | picks | kv_events

    @property
    def label(self) -> str:
        base = f"{self.kind}:{self.policy}" if self.policy else self.kind
        if self.replicas > 1:
            base += f"-{self.replicas}r"
        return base if self.sharing == "none" else f"{base}-{self.sharing}"

    @property
    def needs_pods(self) -> bool:
        return self.kind != "url"


def parse_target(text: str, url: str = "") -> Target:
    m = _REPLICAS.match(text.strip())
    if m and (m["n"] or m["sharing"]):
        base = parse_target(m["base"], url)
        n, sharing = int(m["n"] or 1), m["sharing"] or "none"
        if sharing not in SHARING or n < 1:
            raise ValueError(f"target {text!r}: sharing is one of {SHARING}, replicas >= 1")
        return Target(base.kind, base.policy, replicas=n, sharing=sharing)
    kind, _, policy = text.strip().partition(":")
    if kind in ENVOY_TARGETS and not policy:
        return Target(kind)
    if kind == "picker" and policy in PICKER_VARIANTS:
        return Target(kind, policy)
    if kind in ROUTERS:
        return Target(kind, policy or "cache_aware")
    if kind == "url":
        if not (policy or url):
            raise ValueError("target 'url' needs --url")
        return Target("url", url=policy or url)  # "url:http://host:port" or --url
    raise ValueError(
        f"unknown target {text!r}; use picker[:{'|'.join(PICKER_VARIANTS)}], round_robin, "
        "least_request, "
        "vllm-router:POLICY, sglang-router:POLICY or url"
    )


def expand_replicas(tgts: list[Target], replicas: list[int], sharing: list[str]) -> list[Target]:
    """Each plain picker target once per replica count x sharing mode (``--replicas``,
    ``--sharing``); one replica shares nothing with peers (``picks`` is skipped), but
    ``kv_events`` still switches it to exact matching. Other targets are kept as is."""
    bad = [x for x in sharing if x not in SHARING]
    if bad or not replicas or min(replicas) < 1:
        raise ValueError(f"--sharing takes {','.join(SHARING)}; --replicas N >= 1")
    if replicas == [1] and sharing == ["none"]:
        return tgts
    out: list[Target] = []
    for t in tgts:
        if t.kind != "picker" or t.replicas != 1 or t.sharing != "none":
            out.append(t)
            continue
        for n in replicas:
            for mode in sharing:
                if not (n == 1 and mode == "picks"):
                    out.append(Target(t.kind, t.policy, replicas=n, sharing=mode))
    return out


@contextlib.contextmanager
def launch(
    target: Target,
    pods: list[str],
    *,
    picker_config: dict[str, Any] | None = None,
    model: str = "",
    adapters: list[str] | None = None,
    keep_logs: bool = False,
    kv_events: dict[str, str] | None = None,
    precise: dict[str, Any] | None = None,
    observed: dict[str, Any] | None = None,
) -> Iterator[str]:
    """Starts ``target`` over ``pods`` (host:port); yields the base URL to send to.

    ``kv_events`` (pod -> publisher) and ``precise`` (the plugin entry; None: the
    simulator's) serve targets sharing ``kv_events``. ``observed``, when given, gets
    picker's own account of what its polling cost the pods at the end of the run
    (``observation_share``: see ``observation_share``)."""
    if target.kind == "url":
        yield target.url.rstrip("/")
        return
    if target.kind in ENVOY_TARGETS:
        if target.policy:
            cfg = dict(PICKER_VARIANTS[target.policy])
        else:
            cfg = dict(DEFAULT_PICKER_CONFIG if picker_config is None else picker_config)
        if target.kind == "picker" and adapters and "pools" not in cfg:
            cfg["pools"] = [
                {"name": "pool", "models": ["*"], "adapters": adapters, "endpoints": pods}
            ]
        stack = Stack(
            pods=len(pods),
            target=target.kind,
            pod_addresses=list(pods),
            picker_config=cfg if target.kind == "picker" else {},
            keep_logs=keep_logs,
            replicas=target.replicas,
            sharing=target.sharing,
            kv_events=dict(kv_events or {}),
            precise=precise,
        )
        with stack:
            yield stack.url
            if observed is not None:
                observed.update(observation_share(stack.picker_metrics_ports))
        return
    with Procs(keep_logs=keep_logs) as procs:
        yield start_router(procs, target.kind, target.policy, pods)


# picker's per-pod gauges kept with each run on real pods (the results JSON), to see
# what the latency model believed about each pod at the end.
DIAGNOSTIC_GAUGES = (
    "picker_pod_observation_share",
    "picker_pod_predicted_ttft_seconds",
    "picker_pod_observed_ttft_seconds",
    "picker_pod_prefill_tokens_per_second",
    "picker_pod_scrape_interval_seconds",
)


def observation_share(metrics_ports: list[int]) -> dict[str, Any]:
    """What picker's polls cost the pods, by picker's own gauge (each poll's response
    time over the last 10 s, ``picker_pod_observation_share``): summed over replicas
    per pod, averaged over pods. For real pods, which do not count their renders.
    ``pod_gauges`` has the ``DIAGNOSTIC_GAUGES`` per replica and pod."""
    from prometheus_client.parser import text_string_to_metric_families

    per_pod: dict[str, float] = {}
    gauges: dict[str, dict[str, float]] = {}
    for i, port in enumerate(metrics_ports):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                text = r.read().decode()
        except OSError:
            continue
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name not in DIAGNOSTIC_GAUGES:
                    continue
                pod = sample.labels.get("model_server_pod") or sample.labels.get("endpoint", "")
                gauges.setdefault(sample.name, {})[f"{i}/{pod}"] = sample.value
                if sample.name == "picker_pod_observation_share":
                    per_pod[pod] = per_pod.get(pod, 0.0) + sample.value
    if not per_pod:
        return {}
    return {"observation_share": sum(per_pod.values()) / len(per_pod), "pod_gauges": gauges}
