"""Serving the ext_proc and health gRPC services: picker's own HTTP/2 server (``h2``,
the default) or grpc.aio (``grpcio``), over one ``HealthStatus`` (``health``)."""
