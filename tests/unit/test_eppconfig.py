"""The EPP's EndpointPickerConfig read into picker's scheduler and scrape settings."""

from __future__ import annotations

import pytest

from picker.eppconfig import load_text
from picker.scheduling.pickers import MaxScorePicker, RandomPicker
from picker.scheduling.profile import build_profile
from picker.scheduling.scorers.load import KVCacheScorer, QueueScorer
from picker.scheduling.scorers.prefix import PrefixScorer

# The inference extension chart's default (its ConfigMap, vLLM pool, before June 2026).
CHART_DEFAULT = """
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: prefix-cache-scorer
- type: metrics-data-source
  parameters:
    scheme: "http"
    path: "/metrics"
    insecureSkipVerify: true
- type: core-metrics-extractor
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: queue-scorer
    weight: 2
  - pluginRef: kv-cache-utilization-scorer
    weight: 2
  - pluginRef: prefix-cache-scorer
    weight: 3
"""

HEAD = "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"


def test_the_chart_default_runs_as_picker_plugins() -> None:
    s = load_text(CHART_DEFAULT)
    assert s.scrape_path == "/metrics" and s.model_server == "vllm" and s.metrics == {}
    profile = build_profile(s.scheduler)
    by_name = {type(sc): w for sc, w in profile.scorers}
    assert by_name == {QueueScorer: 2.0, KVCacheScorer: 2.0, PrefixScorer: 3.0}
    assert isinstance(profile.picker, MaxScorePicker) and profile.picker.fallbacks == 0
    assert [type(f).__name__ for f in profile.filters] == ["SubsetFilter"]


def test_names_weights_and_pickers() -> None:
    s = load_text(
        HEAD
        + """
plugins:
- {type: queue-scorer, name: q}
- {type: lora-affinity-scorer}
- {type: random-picker, parameters: {maxNumOfEndpoints: 3}}
- {type: single-profile-handler}
schedulingProfiles:
- name: only
  plugins:
  - {pluginRef: q}
  - {pluginRef: lora-affinity-scorer, weight: 0.5}
  - {pluginRef: random-picker}
"""
    )
    assert s.scheduler["scorers"] == {"q": 1.0, "lora-affinity-scorer": 0.5}
    profile = build_profile(s.scheduler)
    assert isinstance(profile.picker, RandomPicker) and profile.picker.fallbacks == 2


def test_every_plugin_without_an_equivalent_is_named() -> None:
    text = (
        HEAD
        + """
plugins:
- {type: queue-scorer}
- {type: custom-scorer, name: mine}
- {type: weighted-random-picker}
- {type: prefix-cache-scorer, parameters: {matchLengthWeight: 0.5}}
schedulingProfiles:
- {name: a, plugins: [{pluginRef: queue-scorer}]}
- {name: b, plugins: [{pluginRef: mine}]}
"""
    )
    with pytest.raises(ValueError) as e:
        load_text(text, "cfg.yaml")
    msg = str(e.value)
    assert msg.startswith("cfg.yaml: no picker equivalent for:")
    assert "plugin 'mine' (type custom-scorer)" in msg
    assert "plugin 'weighted-random-picker' (type weighted-random-picker)" in msg
    assert "parameter 'matchLengthWeight' of plugin 'prefix-cache-scorer'" in msg
    assert "more than one scheduling profile ['a', 'b']" in msg
    assert "queue-scorer → queue" in msg  # says what picker does map


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("featureGates: [dataLayer]\n", "feature gate 'dataLayer'"),
        ("saturationDetector: {}\n", "section 'saturationDetector'"),
        ("plugins: [{type: vllmgrpc-parser}]\nparser: {pluginRef: vllmgrpc-parser}\n", "parser"),
        (
            "plugins: [{type: queue-scorer}]\n"
            "schedulingProfiles: [{name: d, plugins: [{pluginRef: nope}]}]\n",
            "references 'nope'",
        ),
        (
            "plugins: [{type: metrics-data-source, parameters: {scheme: https}}]\n",
            "http only",
        ),
        ("plugins: [{type: core-metrics-extractor, parameters: {defaultEngine: x}}]\n", "'x'"),
    ],
)
def test_bad_configs(body: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_text(HEAD + body)


def test_not_an_endpoint_picker_config() -> None:
    with pytest.raises(ValueError, match="picker's own YAML goes in --config"):
        load_text("models: {m: ['10.0.0.1:1']}\n")


def test_engines_set_the_metric_names() -> None:
    def engine(params: str) -> tuple[str | None, dict[str, object]]:
        s = load_text(HEAD + f"plugins: [{{type: core-metrics-extractor, parameters: {params}}}]")
        return s.model_server, s.metrics

    assert engine("{defaultEngine: sglang}") == ("sglang", {})
    assert engine("{defaultEngine: triton-tensorrt-llm}") == ("trtllm", {})
    server, metrics = engine("{defaultEngine: trtllm-serve}")
    assert server == "vllm" and metrics["waiting"] == "trtllm_num_requests_waiting"
    assert metrics["lora_info"] == ""
    server, metrics = engine(
        "{defaultEngine: mine, engineConfigs: [{name: mine, queuedRequestsSpec: q, "
        "runningRequestsSpec: r, kvUsageSpec: 'kv{type=frac}'}]}"
    )
    assert (server, metrics) == (
        "vllm",
        {"waiting": "q", "running": "r", "kv_usage": "kv{type=frac}"},
    )
    with pytest.raises(ValueError, match="cacheBlockSizeSpec"):
        engine("{engineConfigs: [{name: vllm, cacheBlockSizeSpec: x}]}")


# The conformance suite's EndpointPickerConfig shape: both test plugins declared, the
# filter in the profile (the verifier is a response hook, never in a profile).
CONFORMANCE = (
    HEAD
    + """
plugins:
- type: header-based-testing-filter
- type: destination-endpoint-served-verifier
- type: max-score-picker
schedulingProfiles:
- name: conformance
  plugins:
  - pluginRef: header-based-testing-filter
  - pluginRef: max-score-picker
"""
)


def test_conformance_test_plugins_pass_through() -> None:
    from picker.datalayer.datastore import Endpoint
    from picker.request.types import InferenceRequest
    from picker.scheduling.testing import SERVED_ECHO_HEADER

    s = load_text(CONFORMANCE)
    assert s.scheduler["filters"] == ["header-based-testing-filter"]
    profile = build_profile(s.scheduler, env={})  # on by the config, not the environment
    names = [type(f).__name__ for f in profile.filters]
    assert names == ["SubsetFilter", "HeaderSelectionFilter"]
    a, b = Endpoint("10.0.0.1:8000"), Endpoint("10.0.0.2:8000")
    req = InferenceRequest(model="m", path="/v1/completions")
    req.endpoint_selection = "10.0.0.2"
    assert profile.schedule(req, [a, b]) == [b]
    assert list(profile.response_headers(req, "10.0.0.2:8000")) == [
        (SERVED_ECHO_HEADER, "10.0.0.2:8000")
    ]


def test_test_filter_declared_but_not_in_the_profile_does_not_filter() -> None:
    text = CONFORMANCE.replace("  - pluginRef: header-based-testing-filter\n", "")
    s = load_text(text)
    assert s.scheduler["filters"] == []
    profile = build_profile(s.scheduler, env={})
    assert [type(f).__name__ for f in profile.filters] == ["SubsetFilter"]


def test_test_filter_with_a_weight_is_an_error() -> None:
    text = CONFORMANCE.replace(
        "pluginRef: header-based-testing-filter",
        "{pluginRef: header-based-testing-filter, weight: 1}",
    )
    with pytest.raises(ValueError, match="not a scorer"):
        load_text(text)
