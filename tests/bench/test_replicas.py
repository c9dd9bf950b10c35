"""Several picker replicas in the harness: target names, the --replicas/--sharing
expansion, Envoy's ext_proc cluster of replicas, the replicas' configs, and exact prefix
matching against the simulator's KV events."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from bench.harness import plan as run_plan
from bench.harness.targets import Target, parse_target
from bench.sim.kvcache import block_hashes
from bench.sim.tokenize import render_chat, tokenize
from bench.stack.envoy import EXT_PROC_RETRY, picker_config
from bench.stack.gateway import Stack
from bench.stack.simprecise import (
    KV_PREFIX_NAME,
    SimPrecisePrefixScorer,
    chat_messages,
    sim_precise_entry,
    with_kv_events,
)
from picker.config import load_config
from picker.request.parse import parse_request
from picker.scheduling.framework import Params


@pytest.mark.parametrize(
    ("text", "kind", "policy", "replicas", "sharing"),
    [
        ("picker", "picker", "", 1, "none"),
        ("picker-3r", "picker", "", 3, "none"),
        ("picker-3r-picks", "picker", "", 3, "picks"),
        ("picker-kv_events", "picker", "", 1, "kv_events"),
        ("picker:weighted-2r-kv_events", "picker", "weighted", 2, "kv_events"),
    ],
)
def test_replica_target_names_round_trip(
    text: str, kind: str, policy: str, replicas: int, sharing: str
) -> None:
    t = parse_target(text)
    assert (t.kind, t.policy, t.replicas, t.sharing) == (kind, policy, replicas, sharing)
    assert t.label == text


@pytest.mark.parametrize("bad", ["picker-3r-gossip", "picker-0r", "round_robin-3r"])
def test_bad_replica_targets_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_target(bad)


def test_replicas_and_sharing_expand_each_plain_picker_target() -> None:
    args = run_plan.parse_args(
        [
            "--targets",
            "picker,round_robin",
            "--replicas",
            "1,3",
            "--sharing",
            "none,picks,kv_events",
        ]
    )
    labels = [t.label for t in run_plan.plan_from(args).targets]
    assert labels == [
        "picker",
        "picker-kv_events",  # one replica: nothing to share with peers, kv_events still applies
        "picker-3r",
        "picker-3r-picks",
        "picker-3r-kv_events",
        "round_robin",
    ]
    plain = run_plan.plan_from(run_plan.parse_args(["--targets", "picker"]))
    assert plain.targets == [Target("picker")]
    with pytest.raises(SystemExit):
        run_plan.plan_from(run_plan.parse_args(["--targets", "picker", "--sharing", "redis"]))


def test_envoy_lists_every_replica_with_health_checks_and_failover() -> None:
    one = picker_config(8080, 9002, 9901)
    cluster = one["static_resources"]["clusters"][1]
    assert "health_checks" not in cluster and "outlier_detection" not in cluster

    cfg = picker_config(8080, 9002, 9901, picker_ports=[9002, 9012, 9022])
    cluster = cfg["static_resources"]["clusters"][1]
    ports = [
        e["endpoint"]["address"]["socket_address"]["port_value"]
        for e in cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    ]
    assert ports == [9002, 9012, 9022]
    (hc,) = cluster["health_checks"]
    assert hc["grpc_health_check"] == {
        "service_name": "envoy.service.ext_proc.v3.ExternalProcessor"
    }
    assert cluster["outlier_detection"]["consecutive_local_origin_failure"] == 1
    ext_proc = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    filters = ext_proc["typed_config"]["http_filters"]
    grpc = next(f for f in filters if f["name"] == "envoy.filters.http.ext_proc")
    assert grpc["typed_config"]["grpc_service"]["retry_policy"] is EXT_PROC_RETRY
    assert grpc["typed_config"]["failure_mode_allow"] is False


def _stack(sharing: str, **kw: Any) -> Stack:
    st = Stack(pods=2, replicas=3, sharing=sharing, pod_addresses=["10.0.0.1:8000"], **kw)
    st.picker_grpc_ports = [1, 2, 3]
    st.picker_metrics_ports = [4, 5, 6]
    st.peer_endpoints = ["tcp://127.0.0.1:7", "tcp://127.0.0.1:8", "tcp://127.0.0.1:9"]
    return st


def test_each_replica_config_loads_with_its_sharing() -> None:
    st = _stack("picks")
    for i in range(3):
        cfg = load_config(data=st.replica_config(i))
        assert cfg.grpc_port == i + 1
        assert cfg.peers.publish == st.peer_endpoints[i]
        assert cfg.peers.endpoints == st.peer_endpoints
    kv = _stack("kv_events", kv_events={"10.0.0.1:8000": "tcp://127.0.0.1:5557"})
    spec = load_config(data=kv.replica_config(2)).scheduler
    assert spec is not None and spec["plugins"][-1] == sim_precise_entry(kv.kv_events)
    assert not load_config(data=_stack("none").replica_config(1)).peers.enabled
    with pytest.raises(ValueError):
        _stack("kv_events").replica_config(0)  # no publishers to subscribe to


def test_kv_events_moves_the_approximate_prefix_weight_to_the_exact_match() -> None:
    entry = sim_precise_entry({"a:1": "tcp://a:2"})
    spec = with_kv_events({"scorers": {"prefix": 3.0, "queue": 2.0}}, entry)
    assert spec["scorers"] == {"prefix": 0.0, "queue": 2.0, KV_PREFIX_NAME: 3.0}
    default = with_kv_events(None, entry)  # the latency prediction reads kv_prefix itself
    assert default["plugins"][-1] is not entry and default["plugins"][-1] == entry
    assert KV_PREFIX_NAME not in default["scorers"]


def test_sim_precise_hashes_what_the_simulator_caches() -> None:
    scorer = SimPrecisePrefixScorer("kv", Params({"block_size": 16}))
    prompt = "a shared system prompt with some words in it " * 10
    req = parse_request("/v1/completions", b'{"model": "m", "prompt": "%s"}' % prompt.encode())
    assert scorer.hashes(req) == block_hashes(tokenize(prompt), 16)
    messages = [
        {"role": "system", "content": "be brief\nand exact"},
        {"role": "user", "content": "what is 12 + 30?"},
        {"role": "assistant", "content": "42"},
        {"role": "user", "content": "and twice that?"},
    ]
    chat = parse_request("/v1/chat/completions", orjson.dumps({"model": "m", "messages": messages}))
    assert chat_messages(chat.prompt) == messages
    assert scorer.hashes(chat) == block_hashes(tokenize(render_chat(messages)), 16)


def test_real_pods_kv_events_config_builds_a_precise_profile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``--backend real --sharing kv_events``: picker's own precise_prefix with the real
    model's tokenizer and vLLM's hash settings, subscribed to every pod."""
    import bench.realvllm
    from bench.harness.pods import real_precise_entry
    from picker.scheduling.profile import build_profile
    from picker.scheduling.scorers.precise_prefix import PrecisePrefixScorer
    from tests import FIXTURES

    monkeypatch.setattr(bench.realvllm, "default_model_dir", lambda: FIXTURES / "kv_events")
    events = {"127.0.0.1:8101": "tcp://127.0.0.1:5601", "127.0.0.1:8102": "tcp://127.0.0.1:5602"}
    entry = real_precise_entry(events)
    profile = build_profile(with_kv_events(None, entry))
    (precise,) = [p for p in profile.plugins if isinstance(p, PrecisePrefixScorer)]
    assert precise.name == KV_PREFIX_NAME and precise.tokenizer is not None
    assert precise.events.endpoints == events
    assert precise.hasher.block_size == bench.realvllm.BLOCK_SIZE
