"""The inference extension endpoint picker's ``EndpointPickerConfig``, read into picker's
own configuration (``--config-file`` / ``--config-text``).

The EPP's config names plugins by type (``queue-scorer``, ``prefix-cache-scorer``, ...),
declares instances (``type``, optional ``name``, ``parameters``) and one scheduling
profile referencing them by name with weights. picker's scheduler has the same shape
(``picker.scheduling.profile``): each EPP plugin with a picker equivalent becomes a
picker plugin instance of the same name, the profile's weights become picker's scorer
weights. The data-layer plugins set where and what picker scrapes. A plugin, parameter
or section picker has no equivalent for is an error naming every one of them, never
silently dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from picker.scheduling.profile import plugin_entry

API_VERSIONS = frozenset({"inference.networking.x-k8s.io/v1alpha1", "llm-d.ai/v1alpha1"})
KIND = "EndpointPickerConfig"

# EPP scheduling plugin type → picker plugin type (same role; parameters in ``_PARAMS``).
SCHEDULING: dict[str, str] = {
    "queue-scorer": "queue",
    "kv-cache-utilization-scorer": "kv_cache",
    "prefix-cache-scorer": "prefix",
    "lora-affinity-scorer": "lora_affinity",
    "running-requests-size-scorer": "running",
    "active-request-scorer": "least_inflight",
    "token-load-scorer": "token_load",
    "max-score-picker": "max_score",
    "random-picker": "random",
}
PICKERS = frozenset({"max-score-picker", "random-picker"})
# The conformance suite's test plugins: picker has them under the same type names
# (``picker.scheduling.testing``). The filter runs where the profile references it; the
# verifier (a response hook, never in a profile) acts once declared.
TESTING: dict[str, str] = {
    "header-based-testing-filter": "header-based-testing-filter",
    "destination-endpoint-served-verifier": "destination-endpoint-served-verifier",
}
FILTERS = frozenset({"header-based-testing-filter"})
# Plugins picker takes with no scheduling instance: what they do is built into picker.
BUILT_IN: dict[str, str] = {
    "single-profile-handler": "picker runs one scheduling profile",
    "openai-parser": "picker parses the OpenAI API",
    "approx-prefix-cache-producer": "picker's prefix scorer produces its own match",
    "inflight-load-producer": "picker counts its in-flight requests itself",
    "metrics-data-source": "picker scrapes each pod's /metrics",
    "core-metrics-extractor": "picker reads the engine's queue, KV-cache and LoRA metrics",
}
# Parameters each type accepts (all others are errors naming the plugin and the key).
_PARAMS: dict[str, frozenset[str]] = {
    "max-score-picker": frozenset({"maxNumOfEndpoints"}),
    "random-picker": frozenset({"maxNumOfEndpoints"}),
    "metrics-data-source": frozenset({"scheme", "path", "insecureSkipVerify"}),
    "core-metrics-extractor": frozenset({"defaultEngine", "engineConfigs"}),
}
# EPP engine → picker model_server, plus metric-name overrides where picker has no preset.
ENGINES: dict[str, tuple[str, dict[str, Any]]] = {
    "vllm": ("vllm", {}),
    "sglang": ("sglang", {}),
    "triton-tensorrt-llm": ("trtllm", {}),
    "trtllm-serve": (
        "vllm",
        {
            "waiting": "trtllm_num_requests_waiting",
            "running": "trtllm_num_requests_running",
            "kv_usage": "trtllm_kv_cache_utilization",
            "lora_info": "",
            "cache_config_info": "",
        },
    ),
}
# engineConfigs[] keys → picker's metric-name override keys.
_ENGINE_SPECS = {
    "queuedRequestsSpec": "waiting",
    "runningRequestsSpec": "running",
    "kvUsageSpec": "kv_usage",
    "loraSpec": "lora_info",
    "cacheInfoSpec": "cache_config_info",
}
_TOP = frozenset(
    {"apiVersion", "kind", "plugins", "schedulingProfiles", "featureGates", "parser", "dataLayer"}
)


@dataclass
class EppSettings:
    """What an EndpointPickerConfig sets in picker's ``Config``."""

    scheduler: dict[str, Any]
    scrape_path: str | None = None
    model_server: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)


def load_text(text: str, where: str = "--config-text") -> EppSettings:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ValueError(f"{where}: not YAML: {e}") from None
    if not isinstance(data, Mapping):
        raise ValueError(f"{where}: an EndpointPickerConfig must be a mapping")
    return from_mapping(data, where)


def _mapping(value: Any, what: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"{what} must be a mapping")
    return value


def _list(value: Any, what: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValueError(f"{what} must be a list")
    return value


def from_mapping(data: Mapping[str, Any], where: str) -> EppSettings:
    """An EndpointPickerConfig → ``EppSettings``; ValueError naming what picker lacks."""
    if data.get("kind") != KIND or data.get("apiVersion") not in API_VERSIONS:
        raise ValueError(
            f"{where}: expected kind {KIND} with apiVersion one of {sorted(API_VERSIONS)}, "
            f"got {data.get('kind')!r} {data.get('apiVersion')!r} (picker's own YAML goes "
            "in --config)"
        )
    problems: list[str] = [f"section {k!r}" for k in data if k not in _TOP]
    gates = _list(data.get("featureGates"), f"{where}: featureGates")
    problems += [f"feature gate {g!r}" for g in gates]

    declared: dict[str, tuple[str, Mapping[str, Any]]] = {}
    for i, entry in enumerate(_list(data.get("plugins"), f"{where}: plugins")):
        entry = _mapping(entry, f"{where}: plugins[{i}]")
        type_name, name = plugin_entry(entry, f"{where}: plugins[{i}]")
        if name in declared:
            raise ValueError(f"{where}: plugin name {name!r} is declared twice")
        params = _mapping(entry.get("parameters"), f"{where}: plugin {name!r} parameters")
        declared[name] = (type_name, params)
        if type_name not in SCHEDULING and type_name not in BUILT_IN and type_name not in TESTING:
            problems.append(f"plugin {name!r} (type {type_name})")
            continue
        for key in params:
            if key not in _PARAMS.get(type_name, frozenset()):
                problems.append(f"parameter {key!r} of plugin {name!r} (type {type_name})")

    profiles = _list(data.get("schedulingProfiles"), f"{where}: schedulingProfiles")
    if len(profiles) > 1:
        names = [_mapping(p, "profile").get("name") for p in profiles]
        problems.append(f"more than one scheduling profile {names} (picker runs one)")
    parser_ref = _mapping(data.get("parser"), f"{where}: parser").get("pluginRef")
    if parser_ref is not None and declared.get(parser_ref, ("",))[0] != "openai-parser":
        problems.append(f"parser {parser_ref!r} (picker parses the OpenAI API)")
    if problems:
        raise ValueError(
            f"{where}: no picker equivalent for: {'; '.join(problems)}. picker maps "
            f"{', '.join(f'{k} → {v}' for k, v in SCHEDULING.items())}, the test plugins "
            f"{', '.join(TESTING)}, and takes {', '.join(BUILT_IN)}"
        )
    settings = EppSettings(scheduler={})
    _scheduler(settings, declared, profiles[0] if profiles else {}, where)
    for name, (type_name, params) in declared.items():
        if type_name == "metrics-data-source":
            _data_source(settings, name, params)
        elif type_name == "core-metrics-extractor":
            _extractor(settings, name, params)
    return settings


def _scheduler(
    settings: EppSettings,
    declared: Mapping[str, tuple[str, Mapping[str, Any]]],
    profile: Any,
    where: str,
) -> None:
    plugins: list[dict[str, Any]] = []
    for name, (type_name, _params) in declared.items():
        if type_name in SCHEDULING and type_name not in PICKERS:
            plugins.append({"type": SCHEDULING[type_name], "name": name})
        elif type_name in TESTING:
            plugins.append({"type": TESTING[type_name], "name": name})
    filters: list[str] = []
    scorers: dict[str, float] = {}
    picker, fallbacks = "max_score", 0
    have_picker = False
    refs = _list(_mapping(profile, f"{where}: profile").get("plugins"), f"{where}: profile")
    for entry in refs:
        ref = _mapping(entry, f"{where}: profile plugin")
        ref_name = ref.get("pluginRef")
        if not isinstance(ref_name, str) or ref_name not in declared:
            raise ValueError(
                f"{where}: the profile references {ref_name!r}, which no plugin declares"
            )
        type_name, params = declared[ref_name]
        weight = ref.get("weight")
        if type_name in PICKERS:
            if have_picker:
                raise ValueError(f"{where}: the profile has more than one picker")
            have_picker = True
            picker = SCHEDULING[type_name]
            n = params.get("maxNumOfEndpoints", 1)
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError(f"{where}: {ref_name}: maxNumOfEndpoints must be an integer >= 1")
            fallbacks = n - 1
        elif type_name in FILTERS and weight is None:
            if ref_name not in filters:
                filters.append(str(ref_name))
        elif type_name in SCHEDULING:
            w = 1.0 if weight is None else weight
            if isinstance(w, bool) or not isinstance(w, int | float) or w < 0:
                raise ValueError(f"{where}: weight of {ref_name!r} must be a number >= 0")
            scorers[str(ref_name)] = float(w)
        elif weight is not None:
            raise ValueError(
                f"{where}: {ref_name!r} ({type_name}) is not a scorer; it has no weight"
            )
    settings.scheduler = {
        "plugins": plugins,
        "filters": filters,
        "scorers": scorers,
        "picker": picker,
        "fallbacks": fallbacks,
    }


def _data_source(settings: EppSettings, name: str, params: Mapping[str, Any]) -> None:
    scheme = params.get("scheme", "http")
    if scheme != "http":
        raise ValueError(f"plugin {name!r}: scheme {scheme!r}: picker scrapes over http only")
    path = params.get("path")
    if path is not None:
        if not isinstance(path, str) or not path.startswith("/"):
            raise ValueError(f"plugin {name!r}: path must start with '/'")
        settings.scrape_path = path


def _extractor(settings: EppSettings, name: str, params: Mapping[str, Any]) -> None:
    engine = params.get("defaultEngine", "vllm")
    configs = _list(params.get("engineConfigs"), f"plugin {name!r}: engineConfigs")
    custom: dict[str, Mapping[str, Any]] = {}
    for c in configs:
        c = _mapping(c, f"plugin {name!r}: engineConfigs[]")
        custom[str(c.get("name", ""))] = c
    if engine not in ENGINES and engine not in custom:
        raise ValueError(
            f"plugin {name!r}: defaultEngine {engine!r} is neither built in "
            f"({', '.join(ENGINES)}) nor in engineConfigs"
        )
    model_server, overrides = ENGINES.get(engine, ("vllm", {}))
    overrides = dict(overrides)
    if engine in custom:
        for key, value in custom[engine].items():
            if key == "name":
                continue
            if key not in _ENGINE_SPECS:
                raise ValueError(
                    f"plugin {name!r}: engineConfigs {engine!r}: {key!r} has no picker "
                    f"equivalent; picker reads {', '.join(_ENGINE_SPECS)}"
                )
            overrides[_ENGINE_SPECS[key]] = "" if value is None else str(value)
    settings.model_server = model_server
    settings.metrics = overrides
