"""The conformance suite's hooks (gateway-api-inference-extension ``conformance/``).

The suite steers each request to chosen pods and checks which pod served it. The
reference endpoint picker does it with two test plugins, named in the suite's
``EndpointPickerConfig`` (earlier: switched on by the environment variable
``ENABLE_REQ_HEADER_BASED_SCHEDULER_FOR_TESTING=true``); picker has both, under the
same type names, and the same variable adds both to the profile (``from_env``):

* ``header-based-testing-filter``: keeps only the candidates named in the request header
  ``test-epp-endpoint-selection``, a comma-separated list of ``IP`` (every target port
  of that pod: a data-parallel pod has several) or ``IP:port`` (that endpoint only);
  IPv6 with or without brackets. Unlike the reference, a request without the header
  keeps every candidate (the reference then has none, so answers 503).
* ``destination-endpoint-served-verifier``: echoes the endpoint the proxy reports in
  ``envoy.lb`` / ``x-gateway-destination-endpoint-served`` into the response header
  ``x-conformance-test-served-endpoint`` (``fail: ...`` when the proxy sent none).

Never enable them in production: the header lets any client pick the pod.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from picker.datalayer.datastore import Endpoint
from picker.request.types import InferenceRequest
from picker.scheduling.framework import Filter, Plugin

SELECTION_HEADER = "test-epp-endpoint-selection"
SERVED_ECHO_HEADER = "x-conformance-test-served-endpoint"
ENV_FLAG = "ENABLE_REQ_HEADER_BASED_SCHEDULER_FOR_TESTING"


def normalize_entry(item: str) -> str:
    """An ``IP``, ``IP:port``, ``[v6]:port``, ``[v6]`` or bare ``v6`` entry in picker's
    address form: ``host:port`` or a bare host, IPv6 hosts in brackets."""
    item = item.strip()
    if item.startswith("["):
        return item[:-1].lstrip("[").join("[]") if item.endswith("]") else item
    if item.count(":") > 1:  # a bare IPv6 address
        return f"[{item}]"
    return item


def parse_entries(value: str) -> frozenset[str]:
    """The header's (or a subset hint's) entries, normalized; empty ones dropped."""
    return frozenset(normalize_entry(i) for i in value.split(",") if i.strip())


def allowed(endpoint: Endpoint, entries: frozenset[str]) -> bool:
    """``endpoint`` is named by its address, or by its bare host (any port)."""
    return endpoint.address in entries or endpoint.host in entries


class HeaderSelectionFilter(Filter):
    type = "header-based-testing-filter"

    def filter(self, request: InferenceRequest, candidates: list[Endpoint]) -> list[Endpoint]:
        value = request.endpoint_selection
        if value is None:
            return candidates
        entries = parse_entries(value)
        return [e for e in candidates if allowed(e, entries)]


class ServedEndpointEcho(Plugin):
    type = "destination-endpoint-served-verifier"

    def response_headers(
        self, request: InferenceRequest, served: str | None
    ) -> Sequence[tuple[str, str]]:
        if served is None:
            return ((SERVED_ECHO_HEADER, "fail: missing destination endpoint served metadata"),)
        return ((SERVED_ECHO_HEADER, served),)


def from_env(env: Mapping[str, str]) -> bool:
    """True when the environment asks for the test hooks (as the reference's flag)."""
    return env.get(ENV_FLAG, "").strip().lower() in ("1", "t", "true")
