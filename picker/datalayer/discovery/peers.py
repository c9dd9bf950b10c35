"""Finds the other picker replicas in the cluster: the peer exchange's endpoints.

With ``peers.selector`` (a label selector of picker's own pods, which the Helm chart
sets to its pods' labels) picker lists and watches those pods in its namespace and
keeps the peer exchange subscribed to ``tcp://<podIP>:<port>`` of each of them, so
replicas find each other as a Deployment scales, without one Service per replica.

A replica counts as a peer as soon as it has an IP, before it is Ready: a new replica
waits for its peers' replays before it reports ready (``peers.warmup``), and its own
picks should reach them from its first routed request. A pod being deleted stops being
a peer (its load is dropped when it goes silent, ``peers.peer_timeout``). This pod
itself (by name: ``$POD_NAME``, else the hostname, which Kubernetes sets to the pod's
name) is left out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from picker.datalayer.discovery.client import KubeClient
from picker.datalayer.discovery.objects import PodInfo, pod_info
from picker.datalayer.discovery.reflector import Backoff, Reflector
from picker.datalayer.discovery.selector import Selector, parse

if TYPE_CHECKING:
    from picker.config import PeersConfig
    from picker.datalayer.discovery.controller import Discovery

log = logging.getLogger(__name__)


class PeerDiscovery:
    """Calls ``on_change`` with the sorted peer endpoints whenever the set changes."""

    def __init__(
        self,
        client: KubeClient,
        namespace: str,
        selector: Selector,
        port: int,
        on_change: Callable[[Sequence[str]], None],
        *,
        own_name: str,
        max_peers: int = 64,
        watch_timeout: int = 300,
        backoff: Backoff | None = None,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ) -> None:
        self.port = port
        self.own_name = own_name
        self.on_change = on_change
        self.max_peers = max_peers
        self.endpoints: tuple[str, ...] = ()
        self.reflector: Reflector[PodInfo] = Reflector(
            client,
            f"/api/v1/namespaces/{namespace}/pods",
            pod_info,
            on_replace=lambda objects: self._update(),
            on_event=lambda kind, name, pod: self._update(),
            label_selector=str(selector),
            max_objects=max_peers + 1,  # the peers and this pod
            watch_timeout=watch_timeout,
            backoff=backoff,
            sleep=sleep,
            name=f"peer pods {namespace} ({selector})",
        )
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def of(
        cls, discovery: Discovery, config: PeersConfig, on_change: Callable[[Sequence[str]], None]
    ) -> PeerDiscovery:
        """Peer discovery on ``discovery``'s client, in its namespace."""
        own = os.environ.get("POD_NAME") or socket.gethostname()
        return cls(
            discovery.client,
            discovery.namespace,
            parse(config.selector),
            config.port,
            on_change,
            own_name=own,
            max_peers=config.max_peers,
            watch_timeout=discovery.watch_timeout,
        )

    @property
    def synced(self) -> asyncio.Event:
        return self.reflector.synced

    def _update(self) -> None:
        found = sorted(
            f"tcp://{p.host}:{self.port}"
            for p in self.reflector.objects.values()
            if p.ip and not p.deleting and p.name != self.own_name
        )
        endpoints = tuple(found[: self.max_peers])
        if endpoints != self.endpoints:
            log.info("peers: %d replica(s) found: %s", len(endpoints), ", ".join(endpoints))
            self.endpoints = endpoints
            self.on_change(endpoints)

    async def start(self) -> None:
        self._task = asyncio.create_task(self.reflector.run(), name="peer-discovery")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None  # (the client is discovery's: it closes it)
