"""Envoy configurations for picker and for the baselines it is compared with.

``picker_config`` is the Endpoint Picker Protocol setup of the inference extension: an
ext_proc filter that calls picker, and an ``ORIGINAL_DST`` cluster that connects to the
``ip:port`` picker writes into ``x-gateway-destination-endpoint``. ``cluster_config`` is
the plain-Service baseline: a static cluster of the pods with Envoy's own load balancer.
The shipped ``deploy/envoy.yaml`` is ``picker_config`` rendered with default ports.

Safe whether picker is up or down, fail-open or fail-closed (``docs/failure-modes.md``):

* a ``header_mutation`` filter ahead of ext_proc removes any client-supplied
  ``x-gateway-destination-endpoint`` (and ``-served``), so the ORIGINAL_DST cluster only
  ever sees the header picker wrote: a client can never name the address Envoy connects
  to, even when ext_proc fails open and picker never saw the request;
* a request without picker's header has no destination (the listener does not restore
  original destinations), so Envoy answers it itself: ``no_healthy_upstream``;
* ``local_reply_config`` turns Envoy's own errors (ext_proc failed, no destination,
  upstream connect failure/reset/timeout) into OpenAI-style JSON bodies. It matches
  them by response code details or response flags, never by status alone, so picker's
  ImmediateResponses (already JSON) and the model servers' responses pass unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

BODY_MODES = ("NONE", "STREAMED", "BUFFERED", "BUFFERED_PARTIAL", "FULL_DUPLEX_STREAMED")
DESTINATION = "x-gateway-destination-endpoint"
SERVED = "x-gateway-destination-endpoint-served"
# Benchmarks only (report_upstream): the pod that served a response, for per-pod figures.
UPSTREAM_HEADER = "x-bench-upstream"
# Flags of Envoy's own replies when the upstream could not be reached or answer in time.
UPSTREAM_FAILURE_FLAGS = ["UF", "UC", "URX", "UO", "UT", "UR", "UMSDR"]


def _openai_error(message: str, code: str) -> dict[str, Any]:
    """A ``local_reply_config`` body: ``{"error": {message, type, param, code}}``."""
    error = {"message": message, "type": "server_error", "param": None, "code": code}
    return {"json_format": {"error": error}}


def strip_client_destination() -> dict[str, Any]:
    """Removes client copies of the destination headers before ext_proc sees the request."""
    return {
        "name": "envoy.filters.http.header_mutation",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3."
            "HeaderMutation",
            "mutations": {"request_mutations": [{"remove": DESTINATION}, {"remove": SERVED}]},
        },
    }


def local_replies() -> dict[str, Any]:
    """JSON bodies for Envoy's own errors; picker's and upstream bodies are left alone."""
    picker_down = "The gateway's endpoint picker is unavailable; the request was not routed."
    unrouted = "The gateway has no endpoint for this request: the endpoint picker did not route it."
    return {
        "mappers": [
            {  # ext_proc failed (picker unreachable, reset, timed out) and did not fail open
                "filter": {
                    "extension_filter": {
                        "name": "envoy.access_loggers.extension_filters.cel",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.access_loggers."
                            "filters.cel.v3.ExpressionFilter",
                            "expression": "response.code_details.startsWith('ext_proc_error')",
                        },
                    }
                },
                "status_code": 503,
                "body_format_override": _openai_error(picker_down, "service_unavailable"),
            },
            {  # no destination header: ext_proc failed open, picker never routed it
                "filter": {"response_flag_filter": {"flags": ["UH"]}},
                "status_code": 503,
                "body_format_override": _openai_error(unrouted, "service_unavailable"),
            },
            {  # the picked pod could not be reached or did not answer in time
                "filter": {"response_flag_filter": {"flags": UPSTREAM_FAILURE_FLAGS}},
                "body_format_override": _openai_error("%LOCAL_REPLY_BODY%", "upstream_error"),
            },
        ]
    }


def _listener(
    port: int,
    http_filters: list[dict[str, Any]],
    cluster: str,
    host: str = "127.0.0.1",
    local_reply_config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    listener: dict[str, Any] = {
        "name": "ingress",
        "address": {"socket_address": {"address": host, "port_value": port}},
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network."
                            "http_connection_manager.v3.HttpConnectionManager",
                            "stat_prefix": "ingress",
                            "stream_idle_timeout": "600s",
                            "route_config": {
                                "name": "local",
                                "virtual_hosts": [
                                    {
                                        "name": "all",
                                        "domains": ["*"],
                                        "routes": [
                                            {
                                                "match": {"prefix": "/"},
                                                "route": {"cluster": cluster, "timeout": "0s"},
                                            }
                                        ],
                                    }
                                ],
                            },
                            "http_filters": [
                                *http_filters,
                                {
                                    "name": "envoy.filters.http.router",
                                    "typed_config": {
                                        "@type": "type.googleapis.com/envoy.extensions.filters."
                                        "http.router.v3.Router"
                                    },
                                },
                            ],
                        },
                    }
                ]
            }
        ],
    }
    if local_reply_config is not None:
        hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
        hcm["local_reply_config"] = local_reply_config
    return listener


_BIG = {"max_connections": 100000, "max_pending_requests": 100000, "max_requests": 100000}


def _static_cluster(name: str, addrs: list[str], lb: str, http2: bool = False) -> dict[str, Any]:
    c: dict[str, Any] = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "5s",
        "lb_policy": lb,
        "circuit_breakers": {"thresholds": [_BIG]},
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {
                                        "address": a.rsplit(":", 1)[0],
                                        "port_value": int(a.rsplit(":", 1)[1]),
                                    }
                                }
                            }
                        }
                        for a in addrs
                    ]
                }
            ],
        },
    }
    if http2:
        c["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3."
                "HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
    return c


def _upstream_tls(ca: str | None, client_cert: tuple[str, str] | None) -> dict[str, Any]:
    common: dict[str, Any] = {"alpn_protocols": ["h2"]}
    if ca is not None:
        common["validation_context"] = {"trusted_ca": {"filename": ca}}
    if client_cert is not None:
        cert, key = client_cert
        common["tls_certificates"] = [
            {"certificate_chain": {"filename": cert}, "private_key": {"filename": key}}
        ]
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
            "UpstreamTlsContext",
            "common_tls_context": common,
            "sni": "picker",
        },
    }


def _admin(port: int) -> dict[str, Any]:
    return {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}


def replicas_cluster(cluster: dict[str, Any], health_interval: float = 0.5) -> dict[str, Any]:
    """Makes the ext_proc cluster of several picker replicas fail over: each is
    health-checked with gRPC health (its ext_proc service's readiness), a replica that
    refuses or resets connections is ejected at once (outlier detection, local-origin
    errors). Envoy's default panic threshold stays: with most replicas unhealthy (all
    of them before their first health check) it tries every one, and the retry policy
    (``EXT_PROC_RETRY``) moves a stream that found a dead one to the next."""
    interval = f"{health_interval:g}s"
    cluster["health_checks"] = [
        {
            "timeout": "1s",
            "interval": interval,
            "no_traffic_interval": interval,
            "unhealthy_threshold": 1,
            "healthy_threshold": 1,
            "grpc_health_check": {"service_name": "envoy.service.ext_proc.v3.ExternalProcessor"},
        }
    ]
    cluster["outlier_detection"] = {
        "split_external_local_origin_errors": True,
        "consecutive_local_origin_failure": 1,
        "enforcing_consecutive_local_origin_failure": 100,
        "consecutive_gateway_failure": 1,
        "enforcing_consecutive_gateway_failure": 100,
        "interval": interval,
        "base_ejection_time": "5s",
        "max_ejection_percent": 100,
        "successful_active_health_check_uneject_host": True,
    }
    return cluster


# A new ext_proc stream that cannot reach its replica (refused, reset before any
# response) is retried on another one; a stream that already had answers is not.
EXT_PROC_RETRY: dict[str, Any] = {
    "retry_on": "connect-failure,refused-stream,reset,unavailable",
    "num_retries": 2,
    "retry_back_off": {"base_interval": "0.005s", "max_interval": "0.05s"},
    "retry_host_predicate": [
        {
            "name": "envoy.retry_host_predicates.previous_hosts",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3."
                "PreviousHostsPredicate"
            },
        }
    ],
    "host_selection_retry_max_attempts": 5,
}


def picker_config(
    listen_port: int,
    picker_port: int,
    admin_port: int,
    *,
    picker_ports: Sequence[int] = (),
    picker_host: str = "127.0.0.1",
    request_body_mode: str = "FULL_DUPLEX_STREAMED",
    response_body_mode: str = "NONE",
    failure_mode_allow: bool = False,
    subset_hint: list[str] | None = None,
    listen_host: str = "127.0.0.1",
    picker_tls: bool = False,
    picker_ca: str | None = None,
    client_cert: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """Envoy → ext_proc(picker) → ORIGINAL_DST cluster driven by picker's header.

    ``picker_tls``: Envoy dials picker over TLS with ALPN h2, verifying picker's
    certificate against ``picker_ca`` when given (else encrypting only, as gateways do
    with the EPP's self-signed certificate); ``client_cert`` (cert, key files) is what
    Envoy presents when picker requires client certificates (mTLS).

    The response body is not sent to picker by default (``NONE``): picker needs only the
    response headers and the end of the stream, which Envoy signals by closing the
    ext_proc stream when the response ends, so streamed tokens skip a hop through picker.
    ``response_body_mode="FULL_DUPLEX_STREAMED"`` is the inference extension's setup.

    ``picker_ports``: several picker replicas (active-active) in the ext_proc cluster,
    round-robin, health-checked, with failover (``replicas_cluster``, ``EXT_PROC_RETRY``).
    """
    assert request_body_mode in BODY_MODES and response_body_mode in BODY_MODES
    full_duplex = "FULL_DUPLEX_STREAMED" in (request_body_mode, response_body_mode)
    ext_proc: dict[str, Any] = {
        "name": "envoy.filters.http.ext_proc",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3."
            "ExternalProcessor",
            "grpc_service": {"envoy_grpc": {"cluster_name": "picker"}, "timeout": "10s"},
            "failure_mode_allow": failure_mode_allow,
            "status_on_error": {"code": 503},  # fail-closed: picker unreachable or failed
            "message_timeout": "1000s",
            "processing_mode": {
                "request_header_mode": "SEND",
                "response_header_mode": "SEND",
                "request_body_mode": request_body_mode,
                "response_body_mode": response_body_mode,
                "request_trailer_mode": "SEND" if full_duplex else "SKIP",
                "response_trailer_mode": "SEND" if full_duplex else "SKIP",
            },
            "metadata_options": {
                "forwarding_namespaces": {"untyped": ["envoy.lb", "envoy.lb.subset_hint"]}
            },
        },
    }
    ports = list(picker_ports) or [picker_port]
    picker_cluster = _static_cluster(
        "picker", [f"{picker_host}:{p}" for p in ports], "ROUND_ROBIN", http2=True
    )
    if len(ports) > 1:
        replicas_cluster(picker_cluster)
        ext_proc["typed_config"]["grpc_service"]["retry_policy"] = EXT_PROC_RETRY
    if picker_tls:
        picker_cluster["transport_socket"] = _upstream_tls(picker_ca, client_cert)
    filters = [strip_client_destination(), ext_proc]
    if subset_hint is not None:
        # Stand-in for a proxy that narrows the pool (the protocol's subset hint).
        filters.insert(
            1,
            {
                "name": "envoy.filters.http.set_metadata",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http."
                    "set_metadata.v3.Config",
                    "metadata": [
                        {
                            "metadata_namespace": "envoy.lb.subset_hint",
                            "value": {"x-gateway-destination-endpoint-subset": subset_hint},
                        }
                    ],
                },
            },
        )
    return {
        "admin": _admin(admin_port),
        "static_resources": {
            "listeners": [
                _listener(
                    listen_port,
                    filters,
                    "original_destination_cluster",
                    listen_host,
                    local_replies(),
                )
            ],
            "clusters": [
                {
                    "name": "original_destination_cluster",
                    "type": "ORIGINAL_DST",
                    "connect_timeout": "5s",
                    "lb_policy": "CLUSTER_PROVIDED",
                    "circuit_breakers": {"thresholds": [_BIG]},
                    "original_dst_lb_config": {
                        "use_http_header": True,
                        "http_header_name": DESTINATION,
                    },
                },
                picker_cluster,
            ],
        },
    }


def report_upstream(cfg: dict[str, Any]) -> dict[str, Any]:
    """``cfg`` with every response carrying the address of the pod that served it
    (``UPSTREAM_HEADER``): for the benchmark harness's per-pod figures, never for a
    deployment (it tells clients the pods' addresses)."""
    header = {"key": UPSTREAM_HEADER, "value": "%UPSTREAM_REMOTE_ADDRESS%"}
    for listener in cfg["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for f in chain["filters"]:
                for vhost in f["typed_config"]["route_config"]["virtual_hosts"]:
                    vhost["response_headers_to_add"] = [
                        {"header": header, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
                    ]
    return cfg


def cluster_config(
    listen_port: int, admin_port: int, pods: list[str], lb_policy: str = "ROUND_ROBIN"
) -> dict[str, Any]:
    """The baseline: Envoy balancing over the pods by itself (ROUND_ROBIN, LEAST_REQUEST)."""
    return {
        "admin": _admin(admin_port),
        "static_resources": {
            "listeners": [_listener(listen_port, [], "pods")],
            "clusters": [_static_cluster("pods", pods, lb_policy)],
        },
    }


def main() -> None:
    """Prints picker's Envoy config: ``python -m bench.stack.envoy > deploy/envoy.yaml``."""
    import yaml

    cfg = picker_config(8080, 9002, 9901, listen_host="0.0.0.0", picker_tls=True)
    print("# Envoy in front of picker (rendered by `python -m bench.stack.envoy`).")
    print("# Listener :8080 -> ext_proc picker at 127.0.0.1:9002 (TLS, ALPN h2) -> the pod")
    print("# picker chose. To verify picker's certificate or present a client certificate")
    print("# (picker's tls.client_ca_file), add validation_context / tls_certificates to the")
    print("# picker cluster's transport_socket (picker_config(picker_ca=..., client_cert=...)).")
    print(yaml.safe_dump(cfg, sort_keys=False), end="")


def dumps(config: dict[str, Any]) -> bytes:
    """Envoy reads JSON as YAML; JSON keeps the output dependency-free and exact."""
    return orjson.dumps(config, option=orjson.OPT_INDENT_2)


if __name__ == "__main__":
    main()
