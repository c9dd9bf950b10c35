"""Builds discovery from picker's configuration (``Config.discovery``)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

from picker.config import DiscoveryConfig
from picker.datalayer.datastore import Datastore
from picker.datalayer.discovery.client import KubeClient
from picker.datalayer.discovery.controller import Discovery
from picker.datalayer.discovery.kubeconfig import resolve
from picker.datalayer.discovery.selector import parse


def from_config(
    config: DiscoveryConfig,
    datastore: Datastore,
    on_ready: Callable[[bool], None] | None = None,
    env: Mapping[str, str] | None = None,
) -> Discovery:
    """Resolves the API server and credentials now (a bad kubeconfig fails at start)."""
    env = os.environ if env is None else env
    kube = resolve(config.api_server or None, config.kubeconfig or None, env)
    # As the reference endpoint picker: the flag, else $NAMESPACE; then where picker runs.
    namespace = config.pool_namespace or env.get("NAMESPACE") or kube.namespace or "default"
    client = KubeClient(kube, max_event_bytes=config.max_event_bytes)
    return Discovery(
        datastore,
        config.datastore_pool,
        client,
        namespace,
        inference_pool=config.pool_name or None,
        pool_group=config.pool_group,
        selector=parse(config.endpoint_selector) if config.endpoint_selector else None,
        target_ports=tuple(config.endpoint_target_ports),
        max_pods=config.max_pods,
        watch_timeout=config.watch_timeout,
        on_ready=on_ready,
    )
