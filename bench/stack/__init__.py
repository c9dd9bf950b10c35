"""Processes and clients for experiments: a gateway stack (Envoy + picker + pods,
``gateway``), Envoy configs (``envoy``), process supervision (``procs``), HTTP clients
and load generators (``client``, ``loadgen``), peer routers (``routers``) and a trivial
backend (``echo_server``)."""
