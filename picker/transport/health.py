"""gRPC health (``grpc.health.v1.Health``) statuses, shared by both transports."""

from __future__ import annotations

from grpc_health.v1 import health_pb2

EXT_PROC_SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"
# The name the inference extension's chart probes (liveness and readiness, one replica).
INFERENCE_EXTENSION_SERVICE = "inference-extension"
# Names that follow readiness: "" (the server as a whole), the ext_proc service and the
# EPP's own name; ``liveness`` stays SERVING, also while draining.
READINESS_SERVICES = ("readiness", EXT_PROC_SERVICE, INFERENCE_EXTENSION_SERVICE, "")
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class HealthStatus:
    """gRPC health statuses by service name. Starts live and not ready."""

    def __init__(self) -> None:
        self.status: dict[str, int] = {"liveness": SERVING}
        for name in READINESS_SERVICES:
            self.status[name] = NOT_SERVING

    def check(self, service: str) -> int | None:
        return self.status.get(service)

    def set_ready(self, ready: bool) -> None:
        for name in READINESS_SERVICES:
            self.status[name] = SERVING if ready else NOT_SERVING
