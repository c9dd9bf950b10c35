"""picker's own Prometheus metrics.

Names follow the Gateway API Inference Extension's endpoint picker where one exists, so
dashboards built for it work unchanged (``inference_objective_*``, ``inference_pool_*``,
``inference_extension_*``); picker-specific series use the ``picker_`` prefix.

All metrics live in one ``Metrics`` object on its own registry, so tests and several
in-process servers do not collide on the global default registry. ``docs/metrics.md``
lists each of the endpoint picker's series with picker's status.

Label values stay bounded. Model labels go through ``model_label``: a model picker is
configured with (``pin_models``) always keeps its name; a pool serving ``*`` routes any
name the client sends, so the first ``MAX_MODEL_LABELS`` other names keep theirs and
later ones are counted as ``other`` (as the reference caps them). Per-pod labels come
from the datastore and are removed with the pod.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

_SCHED_BUCKETS = (
    0.00001,
    0.00002,
    0.00005,
    0.0001,
    0.0002,
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.05,
    0.1,
)
MAX_MODEL_LABELS = 100
OTHER_MODEL = "other"
_TOKEN_BUCKETS = (1.0, *(float(2**i) for i in range(3, 21)))  # 1, 8, 16, ... 2**20
_FLOW_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_REQ_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_RATIO_BUCKETS = (0.25, 0.5, 0.67, 0.8, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 4.0)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        # prometheus_client's .labels() costs microseconds: ``child`` caches the series.
        self._children: dict[tuple[Any, ...], Any] = {}
        r = self.registry
        self.info = Info("inference_extension", "picker build information", registry=r)
        # Requests, as the inference extension names them.
        self.request_total = Counter(
            "inference_objective_request_total",
            "Requests routed, by model, target model and objective priority.",
            ["model_name", "target_model_name", "priority"],
            registry=r,
        )
        self.request_error_total = Counter(
            "inference_objective_request_error_total",
            "Requests answered by picker with an error, by model and error code.",
            ["model_name", "target_model_name", "error_code"],
            registry=r,
        )
        self.request_duration = Histogram(
            "inference_objective_request_duration_seconds",
            "Request duration from the first header to the end of the response.",
            ["model_name", "target_model_name"],
            buckets=_REQ_BUCKETS,
            registry=r,
        )
        self.running_requests = Gauge(
            "inference_objective_running_requests",
            "Requests picker has routed that have not finished yet.",
            ["model_name"],
            registry=r,
        )
        self.request_sizes = Histogram(
            "inference_objective_request_sizes",
            "Request body size in bytes.",
            ["model_name", "target_model_name"],
            buckets=(64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216),
            registry=r,
        )
        # Token counts, known when the request is routed (picker sees no response body
        # with the default Envoy config): the prompt's tokens (exact for token ids, else
        # the chars_per_token estimate) and the part the chosen pod is expected to hold.
        self.input_tokens = Histogram(
            "inference_objective_input_tokens",
            "Prompt tokens of routed requests (exact for token-id prompts, else estimated).",
            ["model_name", "target_model_name"],
            buckets=_TOKEN_BUCKETS,
            registry=r,
        )
        self.prompt_cached_tokens = Histogram(
            "inference_objective_prompt_cached_tokens",
            "Prompt tokens the chosen pod is expected to hold in its prefix cache.",
            ["model_name", "target_model_name"],
            buckets=_TOKEN_BUCKETS,
            registry=r,
        )
        self.rewrite_decisions = Counter(
            "inference_extension_model_rewrite_decisions_total",
            "Model rewrites applied, by rewrite object, model and target model.",
            ["model_rewrite_name", "model_name", "target_model"],
            registry=r,
        )
        # picker's own outcome counter: every request ends in exactly one outcome.
        self.outcome_total = Counter(
            "picker_requests_total",
            "Requests seen by picker, by model, outcome and HTTP status picker decided.",
            ["model_name", "outcome", "status"],
            registry=r,
        )
        self.endpoint_outcome_total = Counter(
            "picker_endpoint_responses_total",
            "Responses that finished, by endpoint and status class.",
            ["endpoint", "status_class"],
            registry=r,
        )
        # Scheduling.
        self.scheduler_duration = Histogram(
            "inference_extension_scheduler_e2e_duration_seconds",
            "Time to run one scheduling cycle (filters, scorers, picker).",
            buckets=_SCHED_BUCKETS,
            registry=r,
        )
        self.scheduler_attempts = Counter(
            "inference_extension_scheduler_attempts_total",
            "Scheduling attempts by result, target model and the chosen pod (success).",
            ["status", "target_model_name", "pod_name", "namespace", "port"],
            registry=r,
        )
        # Pool and pod state (filled by the scraper).
        self.pool_ready_pods = Gauge(
            "inference_pool_ready_pods", "Ready pods in the pool.", ["name"], registry=r
        )
        self.pool_avg_kv = Gauge(
            "inference_pool_average_kv_cache_utilization",
            "Average KV-cache utilization across the pool's ready pods (0-1).",
            ["name"],
            registry=r,
        )
        self.pool_avg_queue = Gauge(
            "inference_pool_average_queue_size",
            "Average waiting-queue length across the pool's ready pods.",
            ["name"],
            registry=r,
        )
        self.pool_avg_running = Gauge(
            "inference_pool_average_running_requests",
            "Average running requests across the pool's ready pods.",
            ["name"],
            registry=r,
        )
        self.pod_queue = Gauge(
            "inference_pool_per_pod_queue_size",
            "Waiting-queue length per pod, as last scraped.",
            ["name", "model_server_pod"],
            registry=r,
        )
        self.pod_info = Gauge(
            "picker_pod_info",
            "1 per endpoint: its model_server_pod label, address and pod.",
            ["name", "model_server_pod", "address", "pod_name", "namespace"],
            registry=r,
        )
        self.pod_kv = Gauge(
            "picker_pod_kv_cache_utilization",
            "KV-cache utilization per pod, as last scraped (0-1).",
            ["name", "model_server_pod"],
            registry=r,
        )
        self.pod_running = Gauge(
            "picker_pod_running_requests",
            "Running requests per pod, as last scraped.",
            ["name", "model_server_pod"],
            registry=r,
        )
        self.pod_inflight = Gauge(
            "picker_pod_inflight_requests",
            "Requests picker sent to the pod that have not finished.",
            ["name", "model_server_pod"],
            registry=r,
        )
        self.pod_ready = Gauge(
            "picker_pod_ready",
            "1 when the pod is eligible for routing (fresh metrics), else 0.",
            ["name", "model_server_pod"],
            registry=r,
        )
        self.scrape_errors = Counter(
            "picker_scrape_errors_total",
            "Failed metric scrapes per pod.",
            ["name", "model_server_pod"],
            registry=r,
        )
        self.scrape_cost = Gauge(
            "picker_pod_scrape_seconds",
            "Time one /metrics scrape of the pod takes (moving average): its cost to the pod.",
            ["name", "model_server_pod"],
            registry=r,
        )
        self.scrape_interval = Gauge(
            "picker_pod_scrape_interval_seconds",
            "Seconds between regular polls of the pod, from its cost and the budget.",
            ["name", "model_server_pod"],
            registry=r,
        )
        self.scrape_share = Gauge(
            "picker_pod_observation_share",
            "Share of the pod's time picker's polls took over the last 10 s (budget: "
            "scrape.budget).",
            ["name", "model_server_pod"],
            registry=r,
        )
        self.scrape_age = Gauge(
            "picker_scrape_age_seconds",
            "Seconds since the pod's last successful scrape.",
            ["name", "model_server_pod"],
            registry=r,
        )
        self.shed_total = Counter(
            "picker_shed_total",
            "Requests rejected with 429 because the pool was saturated.",
            ["model_name"],
            registry=r,
        )
        self.queued_total = Counter(
            "picker_flow_control_queued_total",
            "Requests held in picker's flow-control queue.",
            ["model_name"],
            registry=r,
        )
        flow_labels = [
            "fairness_id",
            "priority",
            "inference_pool",
            "model_name",
            "target_model_name",
        ]
        self.flow_queue_size = Gauge(
            "inference_extension_flow_control_queue_size",
            "Requests currently waiting in picker's flow-control queue.",
            flow_labels,
            registry=r,
        )
        self.flow_queue_bytes = Gauge(
            "inference_extension_flow_control_queue_bytes",
            "Body bytes of the requests waiting in picker's flow-control queue.",
            flow_labels,
            registry=r,
        )
        self.flow_queue_duration = Histogram(
            "inference_extension_flow_control_request_queue_duration_seconds",
            "Time from entering flow control to the outcome (Dispatched, RejectedCapacity, "
            "EvictedTTL, EvictedContextCancelled).",
            [
                "fairness_id",
                "priority",
                "outcome",
                "inference_pool",
                "model_name",
                "target_model_name",
            ],
            buckets=_FLOW_BUCKETS,
            registry=r,
        )
        self.predicted_ttft_error = Histogram(
            "picker_pod_predicted_ttft_error_ratio",
            "Per pod and scrape interval: mean predicted TTFT of the requests picker sent "
            "over the mean TTFT the pod reported (1 = exact).",
            ["endpoint"],
            buckets=_RATIO_BUCKETS,
            registry=r,
        )
        self.predicted_ttft = Gauge(
            "picker_pod_predicted_ttft_seconds",
            "Mean predicted TTFT of the requests sent to the pod in the last interval.",
            ["endpoint"],
            registry=r,
        )
        self.observed_ttft = Gauge(
            "picker_pod_observed_ttft_seconds",
            "Mean TTFT the pod reported over the last interval (its own histogram).",
            ["endpoint"],
            registry=r,
        )
        self.prefill_rate = Gauge(
            "picker_pod_prefill_tokens_per_second",
            "The pod's learned prefill speed (uncached prompt tokens per second).",
            ["endpoint"],
            registry=r,
        )
        self.slo_rejected = Counter(
            "picker_slo_rejected_total",
            "Sheddable requests answered 429 because no pod was predicted to meet their "
            "latency target (x-slo-ttft-ms / x-slo-tpot-ms).",
            ["model_name"],
            registry=r,
        )
        self.prefix_indexer_size = Gauge(
            "inference_extension_prefix_indexer_size",
            "Block hashes held by the prefix index.",
            registry=r,
        )
        # Active-active replicas (picker.datalayer.peers).
        self.peer_records = Counter(
            "picker_peer_records_total",
            "Records exchanged with peer replicas, by direction (sent, received) and kind "
            "(pick, done, state, replay).",
            ["direction", "kind"],
            registry=r,
        )
        self.peer_dropped = Counter(
            "picker_peer_dropped_total",
            "Peer messages or records dropped, by reason (short, version, malformed, "
            "too_many_peers, unknown_endpoint, lost, layout, send_queue_full, error).",
            ["reason"],
            registry=r,
        )
        self.peers_connected = Gauge(
            "picker_peers_connected",
            "Peer replicas heard from within peers.peer_timeout.",
            registry=r,
        )
        self.peer_lag = Histogram(
            "picker_peer_lag_seconds",
            "From a peer's send to this replica applying the batch (the peer's wall clock).",
            buckets=(0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0),
            registry=r,
        )
        self.peer_inflight = Gauge(
            "picker_peer_inflight_requests",
            "Requests peer replicas have in flight, over all pods (part of each pod's load).",
            registry=r,
        )

        self._models: set[str] = {""}  # model label values in use (pinned or admitted)
        self._admitted = 0  # of them, names no configuration pinned

    def pin_models(self, names: Iterable[str]) -> None:
        """Model names picker is configured with: always their own label value."""
        self._models.update(n for n in names if n and n != "*")

    def model_label(self, name: str) -> str:
        """``name`` as a model label value: bounded (see the module doc)."""
        if name in self._models:
            return name
        if self._admitted < MAX_MODEL_LABELS:
            self._admitted += 1
            self._models.add(name)
            return name
        return OTHER_MODEL

    def forget_endpoint(
        self, address: str, pod_name: str = "", namespace: str = "", port: str = ""
    ) -> None:
        """Drops the per-endpoint series of a removed endpoint (bounded under pod churn):
        its responses by ``address``, its scheduling attempts by pod, namespace, port."""
        outcome, attempts = self.endpoint_outcome_total, self.scheduler_attempts
        pod = (pod_name, namespace, port)
        for key in list(self._children):
            if (key[0] == id(outcome) and key[1] == address) or (
                key[0] == id(attempts) and pod_name and key[3:] == pod
            ):
                del self._children[key]
                metric = outcome if key[0] == id(outcome) else attempts
                with contextlib.suppress(KeyError):
                    metric.remove(*key[1:])

    def forget(self, metric: Any, *labels: str) -> None:
        """Drops one series (and its cached child): bounded series under pod churn."""
        self._children.pop((id(metric), *labels), None)
        with contextlib.suppress(KeyError):
            metric.remove(*labels)

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, cached: for the request path."""
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child
