"""The Endpoint Picker Protocol's names, and the ext_proc messages picker sends.

What picker answers Envoy on a request's ext_proc stream (``picker.handlers.stream``):

* the pick goes in the ``x-gateway-destination-endpoint`` request header *and* in dynamic
  metadata ``envoy.lb`` (primary first, fallbacks comma-separated), any client-supplied
  copy of that header is overwritten;
* errors become an ``ImmediateResponse`` with an OpenAI-style JSON body;
* the ``x-gateway-destination-endpoint-served`` metadata on the response side tells which
  endpoint served; response end (or stream reset) releases the in-flight accounting.

Responses that never vary are serialized once at import: the gRPC method is registered
with an identity serializer, so the hot path yields ready-made bytes where it can.
"""

from __future__ import annotations

from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from picker.requestcontrol.accounting import Rejected, Routed
from picker.scheduling.testing import normalize_entry

DESTINATION = "x-gateway-destination-endpoint"
SERVED = "x-gateway-destination-endpoint-served"
SUBSET_NS = "envoy.lb.subset_hint"
SUBSET_KEY = "x-gateway-destination-endpoint-subset"
LB_NS = "envoy.lb"
OBJECTIVE_HEADER = "x-llm-d-inference-objective"
LEGACY_OBJECTIVE_HEADER = "x-gateway-inference-objective"  # read when the new one is absent
# Latency targets in milliseconds (the names of llm-d's predicted-latency scheduling).
SLO_TTFT_HEADER = "x-slo-ttft-ms"
SLO_TPOT_HEADER = "x-slo-tpot-ms"

# ProcessingMode.BodySendMode values
NONE, STREAMED, BUFFERED, BUFFERED_PARTIAL, FULL_DUPLEX_STREAMED = 0, 1, 2, 3, 4
STREAM_CHUNK = 1 << 20  # body bytes per streamed_response message

_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD

REQ_HEADERS_CONTINUE = pb.ProcessingResponse(
    request_headers=pb.HeadersResponse()
).SerializeToString()
RESP_HEADERS_CONTINUE = pb.ProcessingResponse(
    response_headers=pb.HeadersResponse()
).SerializeToString()
REQ_BODY_CONTINUE = pb.ProcessingResponse(request_body=pb.BodyResponse()).SerializeToString()
RESP_BODY_CONTINUE = pb.ProcessingResponse(response_body=pb.BodyResponse()).SerializeToString()
REQ_TRAILERS_CONTINUE = pb.ProcessingResponse(
    request_trailers=pb.TrailersResponse()
).SerializeToString()
RESP_TRAILERS_CONTINUE = pb.ProcessingResponse(
    response_trailers=pb.TrailersResponse()
).SerializeToString()


_STREAMED_FIELDS = {"request_body": 3, "response_body": 4}


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def streamed(field: str, body: bytes, end: bool) -> bytes:
    """A FULL_DUPLEX_STREAMED body chunk for ``field`` (request_body/response_body).

    Encoded by hand: ``ProcessingResponse.{field}.response.body_mutation.
    streamed_response.{body, end_of_stream}`` is five nested length-delimited fields
    around the body, so the (possibly large) body is copied once, not built into a
    message and serialized again. Equal to protobuf's own serialization (tested).
    """
    inner_len = (1 + len(_varint(len(body))) + len(body) if body else 0) + (2 if end else 0)
    head = b""
    n = inner_len
    for tag in (0x1A, 0x1A, 0x0A):  # streamed_response=3, body_mutation=3, response=1
        prefix = bytes((tag,)) + _varint(n)
        head = prefix + head
        n += len(prefix)
    head = bytes((_STREAMED_FIELDS[field] << 3 | 2,)) + _varint(n) + head
    parts = [head]
    if body:
        parts += (b"\x0a", _varint(len(body)), body)
    if end:
        parts.append(b"\x10\x01")
    return b"".join(parts)


RESP_BODY_EMPTY_END = streamed("response_body", b"", True)


def header_value(h: Any) -> str:
    raw: bytes = h.raw_value
    if raw:
        return raw.decode("latin-1")
    value: str = h.value
    return value


def status_of(headers: Any) -> int:
    for h in headers.headers.headers:
        if h.key == ":status":
            v = header_value(h)
            return int(v) if v.isdigit() else 0
    return 0


def _metadata_value(req: Any, namespace: str, key: str) -> Any | None:
    """The value of ``key`` in the request's ``namespace`` filter metadata, if sent."""
    if not req.HasField("metadata_context"):
        return None
    fm = req.metadata_context.filter_metadata
    if namespace not in fm:
        return None
    fields = fm[namespace].fields
    return fields.get(key)


def subset_hint(req: Any) -> frozenset[str] | None:
    """The proxy's allowed endpoints, or None when it sent no hint."""
    value = _metadata_value(req, SUBSET_NS, SUBSET_KEY)
    if value is None:
        return None
    kind = value.WhichOneof("kind")
    if kind == "list_value":
        values = value.list_value.values
        return frozenset(normalize_entry(v.string_value) for v in values if v.string_value)
    if kind == "string_value":
        text = value.string_value
        return frozenset(normalize_entry(a) for a in text.split(",") if a.strip())
    return frozenset()


def served_address(req: Any) -> str | None:
    value = _metadata_value(req, LB_NS, SERVED)
    if value is None:
        return None
    served: str = value.string_value
    return served or None


def immediate(rejected: Rejected) -> bytes:
    resp = pb.ProcessingResponse()
    imm = resp.immediate_response
    imm.status.code = rejected.status
    imm.body = rejected.body
    imm.details = "picker"
    hm = imm.headers
    opt = hm.set_headers.add()
    opt.header.key = "content-type"
    opt.header.raw_value = b"application/json"
    opt.append_action = _OVERWRITE
    for k, v in rejected.headers:
        opt = hm.set_headers.add()
        opt.header.key = k
        opt.header.raw_value = v.encode()
        opt.append_action = _OVERWRITE
    out: bytes = resp.SerializeToString()
    return out


def _route_mutation(common: Any, routed: Routed, content_length: int | None) -> None:
    dest = routed.destination.encode()
    opt = common.header_mutation.set_headers.add()
    opt.header.key = DESTINATION
    opt.header.raw_value = dest
    opt.append_action = _OVERWRITE
    if content_length is not None:
        opt = common.header_mutation.set_headers.add()
        opt.header.key = "content-length"
        opt.header.raw_value = str(content_length).encode()
        opt.append_action = _OVERWRITE


def _set_metadata(resp: Any, routed: Routed) -> None:
    ns = resp.dynamic_metadata.fields[LB_NS].struct_value
    ns.fields[DESTINATION].string_value = routed.destination


def headers_routed(routed: Routed, content_length: int | None = None) -> bytes:
    """Request-headers response that routes (no-body requests, full-duplex mode)."""
    resp = pb.ProcessingResponse()
    _route_mutation(resp.request_headers.response, routed, content_length)
    _set_metadata(resp, routed)
    out: bytes = resp.SerializeToString()
    return out


def body_routed(routed: Routed, body: bytes | None = None) -> bytes:
    """Buffered request-body response: headers are still held, so mutate them here.
    ``body``: a replacement body (a model rewrite), sent with its content-length."""
    resp = pb.ProcessingResponse()
    common = resp.request_body.response
    _route_mutation(common, routed, None if body is None else len(body))
    if body is not None:
        common.body_mutation.body = body
    _set_metadata(resp, routed)
    out: bytes = resp.SerializeToString()
    return out


def response_headers_set(headers: list[tuple[str, str]]) -> bytes:
    """Response-headers answer that sets ``headers`` on the client's response."""
    resp = pb.ProcessingResponse()
    resp.response_headers.SetInParent()  # present even with no header to set
    hm = resp.response_headers.response.header_mutation
    for k, v in headers:
        opt = hm.set_headers.add()
        opt.header.key = k
        opt.header.raw_value = v.encode()
        opt.append_action = _OVERWRITE
    out: bytes = resp.SerializeToString()
    return out
