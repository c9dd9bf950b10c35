"""Envoy ext_proc protocol handling: the Endpoint Picker Protocol over one gRPC stream.

One stream per HTTP request. Envoy sends the request headers, the body (one message when
BUFFERED, many when FULL_DUPLEX_STREAMED), maybe trailers, then the response side. This
module reassembles the body, asks the ``Director`` where to route, and answers Envoy:

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

import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from picker.routing import Director, Rejected, Routed

log = logging.getLogger(__name__)

DESTINATION = "x-gateway-destination-endpoint"
SERVED = "x-gateway-destination-endpoint-served"
SUBSET_NS = "envoy.lb.subset_hint"
SUBSET_KEY = "x-gateway-destination-endpoint-subset"
LB_NS = "envoy.lb"
OBJECTIVE_HEADER = "x-gateway-inference-objective"

# ProcessingMode.BodySendMode values
NONE, STREAMED, BUFFERED, BUFFERED_PARTIAL, FULL_DUPLEX_STREAMED = 0, 1, 2, 3, 4
_STREAM_CHUNK = 1 << 20  # body bytes per streamed_response message

_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD

_REQ_HEADERS_CONTINUE = pb.ProcessingResponse(
    request_headers=pb.HeadersResponse()
).SerializeToString()
_RESP_HEADERS_CONTINUE = pb.ProcessingResponse(
    response_headers=pb.HeadersResponse()
).SerializeToString()
_REQ_BODY_CONTINUE = pb.ProcessingResponse(request_body=pb.BodyResponse()).SerializeToString()
_RESP_BODY_CONTINUE = pb.ProcessingResponse(response_body=pb.BodyResponse()).SerializeToString()
_REQ_TRAILERS_CONTINUE = pb.ProcessingResponse(
    request_trailers=pb.TrailersResponse()
).SerializeToString()
_RESP_TRAILERS_CONTINUE = pb.ProcessingResponse(
    response_trailers=pb.TrailersResponse()
).SerializeToString()


def _streamed(field: str, body: bytes, end: bool) -> bytes:
    """A FULL_DUPLEX_STREAMED body chunk for ``field`` (request_body/response_body)."""
    resp = pb.ProcessingResponse()
    getattr(resp, field).response.body_mutation.streamed_response.body = body
    getattr(resp, field).response.body_mutation.streamed_response.end_of_stream = end
    return resp.SerializeToString()


_RESP_BODY_EMPTY_END = _streamed("response_body", b"", True)


def _header_value(h: Any) -> str:
    raw: bytes = h.raw_value
    if raw:
        return raw.decode("latin-1")
    value: str = h.value
    return value


def _status_of(headers: Any) -> int:
    for h in headers.headers.headers:
        if h.key == ":status":
            v = _header_value(h)
            return int(v) if v.isdigit() else 0
    return 0


def _subset_hint(req: Any) -> frozenset[str] | None:
    """The proxy's allowed endpoints, or None when it sent no hint."""
    if not req.HasField("metadata_context"):
        return None
    fm = req.metadata_context.filter_metadata
    if SUBSET_NS not in fm:
        return None
    fields = fm[SUBSET_NS].fields
    if SUBSET_KEY not in fields:
        return None
    value = fields[SUBSET_KEY]
    kind = value.WhichOneof("kind")
    if kind == "list_value":
        return frozenset(v.string_value for v in value.list_value.values if v.string_value)
    if kind == "string_value":
        return frozenset(a.strip() for a in value.string_value.split(",") if a.strip())
    return frozenset()


def _served_address(req: Any) -> str | None:
    if not req.HasField("metadata_context"):
        return None
    fm = req.metadata_context.filter_metadata
    if LB_NS not in fm:
        return None
    fields = fm[LB_NS].fields
    if SERVED not in fields:
        return None
    value: str = fields[SERVED].string_value
    return value or None


def immediate(rejected: Rejected) -> bytes:
    resp = pb.ProcessingResponse()
    imm = resp.immediate_response
    imm.status.code = rejected.status  # type: ignore[assignment]
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
    return resp.SerializeToString()


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
    return resp.SerializeToString()


def body_routed(routed: Routed) -> bytes:
    """Buffered request-body response: headers are still held, so mutate them here."""
    resp = pb.ProcessingResponse()
    _route_mutation(resp.request_body.response, routed, None)
    _set_metadata(resp, routed)
    return resp.SerializeToString()


class _Stream:
    """State of one HTTP request's ext_proc stream."""

    __slots__ = (
        "body",
        "body_len",
        "objective",
        "path",
        "rejected",
        "req_mode",
        "request_id",
        "resp_mode",
        "routed",
        "status",
        "subset",
    )

    def __init__(self) -> None:
        self.path = "/"
        self.objective: str | None = None
        self.request_id = ""
        self.body: list[bytes] = []
        self.body_len = 0
        self.subset: frozenset[str] | None = None
        self.routed: Routed | None = None
        self.rejected = False
        self.status = 0
        self.req_mode = -1  # unknown until protocol_config or the first body message
        self.resp_mode = -1


class ExtProcService:
    """The ``envoy.service.ext_proc.v3.ExternalProcessor/Process`` handler."""

    def __init__(self, director: Director, default_request_mode: int = FULL_DUPLEX_STREAMED):
        self.director = director
        self.default_request_mode = default_request_mode
        self.max_body = director.config.max_body_bytes

    def _decide(self, st: _Stream, body: bytes | None) -> Routed | Rejected:
        return self.director.decide(
            st.path, body, objective=st.objective, subset=st.subset, request_id=st.request_id
        )

    async def process(
        self, requests: AsyncIterator[pb.ProcessingRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        st = _Stream()
        director = self.director
        try:
            async for req in requests:
                which = req.WhichOneof("request")
                if which == "request_headers":
                    if req.HasField("protocol_config"):
                        st.req_mode = req.protocol_config.request_body_mode
                        st.resp_mode = req.protocol_config.response_body_mode
                    st.subset = _subset_hint(req)
                    hdrs = req.request_headers
                    for h in hdrs.headers.headers:
                        key = h.key
                        if key == ":path":
                            st.path = _header_value(h)
                        elif key == OBJECTIVE_HEADER:
                            st.objective = _header_value(h)
                        elif key == "x-request-id":
                            st.request_id = _header_value(h)
                    if hdrs.end_of_stream:
                        result = self._decide(st, None)
                        if isinstance(result, Rejected):
                            yield immediate(result)
                            return
                        st.routed = result
                        yield headers_routed(result)
                    elif st.req_mode == FULL_DUPLEX_STREAMED:
                        pass  # the headers response waits for the whole body
                    else:
                        yield _REQ_HEADERS_CONTINUE
                elif which == "request_body":
                    rb = req.request_body
                    if st.req_mode < 0:
                        st.req_mode = (
                            self.default_request_mode
                            if not rb.end_of_stream
                            else (BUFFERED if not st.body else self.default_request_mode)
                        )
                    chunk = rb.body
                    if chunk:
                        st.body.append(chunk)
                        st.body_len += len(chunk)
                        if st.body_len > self.max_body:
                            yield immediate(director.reject_too_large(self.max_body))
                            return
                    if rb.end_of_stream or rb.end_of_stream_without_message:
                        async for out in self._route_body(st):
                            yield out
                        if st.rejected:
                            return
                    elif st.req_mode != FULL_DUPLEX_STREAMED:
                        yield _REQ_BODY_CONTINUE
                elif which == "request_trailers":
                    if st.routed is None and st.req_mode == FULL_DUPLEX_STREAMED:
                        async for out in self._route_body(st):
                            yield out
                        if st.rejected:
                            return
                    yield _REQ_TRAILERS_CONTINUE
                elif which == "response_headers":
                    if req.HasField("protocol_config") and st.resp_mode < 0:
                        st.resp_mode = req.protocol_config.response_body_mode
                    routed = st.routed
                    if isinstance(routed, Routed):
                        served = _served_address(req)
                        if served is not None:
                            director.served_by(routed, served)
                        st.status = _status_of(req.response_headers)
                        yield _RESP_HEADERS_CONTINUE
                        if req.response_headers.end_of_stream:
                            director.finish(routed, st.status)
                    else:
                        yield _RESP_HEADERS_CONTINUE
                elif which == "response_body":
                    rb = req.response_body
                    end = rb.end_of_stream or rb.end_of_stream_without_message
                    if st.resp_mode == FULL_DUPLEX_STREAMED:
                        if rb.body or rb.end_of_stream:
                            yield _streamed("response_body", rb.body, rb.end_of_stream)
                        elif end:
                            yield _RESP_BODY_EMPTY_END
                    else:
                        yield _RESP_BODY_CONTINUE
                    if end and isinstance(st.routed, Routed):
                        director.finish(st.routed, st.status)
                elif which == "response_trailers":
                    yield _RESP_TRAILERS_CONTINUE
                    if isinstance(st.routed, Routed):
                        director.finish(st.routed, st.status)
        finally:
            if isinstance(st.routed, Routed) and not st.routed.finished:
                director.finish(st.routed, st.status)

    async def _route_body(self, st: _Stream) -> AsyncIterator[bytes]:
        body = b"".join(st.body) if len(st.body) != 1 else st.body[0]
        st.body = []
        result = self._decide(st, body)
        if isinstance(result, Rejected):
            st.rejected = True
            yield immediate(result)
            return
        st.routed = result
        if st.req_mode == FULL_DUPLEX_STREAMED:
            yield headers_routed(result)
            n = len(body)
            if n <= _STREAM_CHUNK:
                yield _streamed("request_body", body, True)
            else:
                for off in range(0, n, _STREAM_CHUNK):
                    end = off + _STREAM_CHUNK >= n
                    yield _streamed("request_body", body[off : off + _STREAM_CHUNK], end)
        else:
            yield body_routed(result)
