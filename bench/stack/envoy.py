"""Envoy configurations for picker and for the baselines it is compared with.

``picker_config`` is the Endpoint Picker Protocol setup of the inference extension: an
ext_proc filter that calls picker, and an ``ORIGINAL_DST`` cluster that connects to the
``ip:port`` picker writes into ``x-gateway-destination-endpoint``. ``cluster_config`` is
the plain-Service baseline: a static cluster of the pods with Envoy's own load balancer.
The shipped ``deploy/envoy.yaml`` is ``picker_config`` rendered with default ports.
"""

from __future__ import annotations

from typing import Any

import orjson

BODY_MODES = ("NONE", "STREAMED", "BUFFERED", "BUFFERED_PARTIAL", "FULL_DUPLEX_STREAMED")


def _listener(
    port: int, http_filters: list[dict[str, Any]], cluster: str, host: str = "127.0.0.1"
) -> dict[str, Any]:
    return {
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


def _admin(port: int) -> dict[str, Any]:
    return {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}


def picker_config(
    listen_port: int,
    picker_port: int,
    admin_port: int,
    *,
    picker_host: str = "127.0.0.1",
    request_body_mode: str = "FULL_DUPLEX_STREAMED",
    response_body_mode: str = "NONE",
    failure_mode_allow: bool = False,
    subset_hint: list[str] | None = None,
    listen_host: str = "127.0.0.1",
) -> dict[str, Any]:
    """Envoy → ext_proc(picker) → ORIGINAL_DST cluster driven by picker's header.

    The response body is not sent to picker by default (``NONE``): picker needs only the
    response headers and the end of the stream, which Envoy signals by closing the
    ext_proc stream when the response ends, so streamed tokens skip a hop through picker.
    ``response_body_mode="FULL_DUPLEX_STREAMED"`` is the inference extension's setup.
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
    filters = [ext_proc]
    if subset_hint is not None:
        # Stand-in for a proxy that narrows the pool (the protocol's subset hint).
        filters.insert(
            0,
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
                _listener(listen_port, filters, "original_destination_cluster", listen_host)
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
                        "http_header_name": "x-gateway-destination-endpoint",
                    },
                },
                _static_cluster(
                    "picker", [f"{picker_host}:{picker_port}"], "ROUND_ROBIN", http2=True
                ),
            ],
        },
    }


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

    cfg = picker_config(8080, 9002, 9901, listen_host="0.0.0.0")
    print("# Envoy in front of picker (rendered by `python -m bench.stack.envoy`).")
    print("# Listener :8080 -> ext_proc picker at 127.0.0.1:9002 -> the pod picker chose.")
    print(yaml.safe_dump(cfg, sort_keys=False), end="")


def dumps(config: dict[str, Any]) -> bytes:
    """Envoy reads JSON as YAML; JSON keeps the output dependency-free and exact."""
    return orjson.dumps(config, option=orjson.OPT_INDENT_2)


if __name__ == "__main__":
    main()
