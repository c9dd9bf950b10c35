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

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from picker.flow import Held
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
    out: bytes = resp.SerializeToString()
    return out


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


def body_routed(routed: Routed) -> bytes:
    """Buffered request-body response: headers are still held, so mutate them here."""
    resp = pb.ProcessingResponse()
    _route_mutation(resp.request_body.response, routed, None)
    _set_metadata(resp, routed)
    out: bytes = resp.SerializeToString()
    return out


class StreamProcessor:
    """The state machine of one HTTP request's ext_proc stream.

    Synchronous on purpose: ``handle`` takes one ``ProcessingRequest`` and returns the
    serialized responses to send, so the transport (grpc.aio, or picker's own HTTP/2
    server) needs no task or generator per stream. After ``done`` becomes true the
    transport ends the stream; ``close`` must be called exactly once when the stream
    ends for any reason (it releases the in-flight accounting of a reset stream).
    """

    __slots__ = (
        "backlog",
        "body",
        "body_len",
        "director",
        "done",
        "held",
        "held_body",
        "objective",
        "path",
        "req_mode",
        "request_id",
        "resp_mode",
        "routed",
        "service",
        "status",
        "subset",
    )

    def __init__(self, service: ExtProcService) -> None:
        self.service = service
        self.director = service.director
        self.path = "/"
        self.objective: str | None = None
        self.request_id = ""
        self.body: list[bytes] = []
        self.body_len = 0
        self.subset: frozenset[str] | None = None
        self.routed: Routed | None = None
        self.held: Held | None = None  # parked by flow control; see ``resume``
        self.held_body: bytes | None = None
        self.backlog: list[pb.ProcessingRequest] = []
        self.done = False
        self.status = 0
        self.req_mode = -1  # unknown until protocol_config or the first body message
        self.resp_mode = -1

    def _decide(self, body: bytes | None) -> Routed | Rejected | Held:
        try:
            return self.director.decide(
                self.path,
                body,
                objective=self.objective,
                subset=self.subset,
                request_id=self.request_id,
            )
        except Exception:  # a bug must cost one request, never the stream or the server
            log.exception("routing failed for %s", self.path)
            return self.director.internal_error()

    def _reject(self, rejected: Rejected) -> list[bytes]:
        self.done = True
        return [immediate(rejected)]

    def handle(self, req: pb.ProcessingRequest) -> list[bytes]:
        if self.held is not None:
            self.backlog.append(req)  # answered once the parked request is decided
            return []
        which = req.WhichOneof("request")
        if which == "request_headers":
            return self._request_headers(req)
        if which == "request_body":
            return self._request_body(req.request_body)
        if which == "response_headers":
            return self._response_headers(req)
        if which == "response_body":
            return self._response_body(req.response_body)
        if which == "request_trailers":
            if self.routed is None and self.req_mode == FULL_DUPLEX_STREAMED:
                out = self._route_body()
                if self.done:
                    return out
                out.append(_REQ_TRAILERS_CONTINUE)
                return out
            return [_REQ_TRAILERS_CONTINUE]
        if which == "response_trailers":
            self._finish()
            return [_RESP_TRAILERS_CONTINUE]
        return []

    def resume(self) -> list[bytes]:
        """After ``held.future`` resolved: the responses the decision calls for."""
        held = self.held
        assert held is not None and held.future.done()
        self.held = None
        out = self._decided(held.future.result(), self.held_body)
        self.held_body = None
        backlog, self.backlog = self.backlog, []
        for req in backlog:
            if self.done:
                break
            out.extend(self.handle(req))
        return out

    def close(self) -> None:
        """The stream ended (normally or reset): release what is still accounted."""
        if self.held is not None:
            self.director.cancel_held(self.held)
            self.held = None
        self._finish()

    def _finish(self) -> None:
        routed = self.routed
        if routed is not None and not routed.finished:
            self.director.finish(routed, self.status)

    def _request_headers(self, req: pb.ProcessingRequest) -> list[bytes]:
        if req.HasField("protocol_config"):
            self.req_mode = req.protocol_config.request_body_mode
            self.resp_mode = req.protocol_config.response_body_mode
        if req.HasField("metadata_context"):
            self.subset = _subset_hint(req)
        hdrs = req.request_headers
        for h in hdrs.headers.headers:
            key = h.key
            if key == ":path":
                self.path = _header_value(h)
            elif key == OBJECTIVE_HEADER:
                self.objective = _header_value(h)
            elif key == "x-request-id":
                self.request_id = _header_value(h)
        if hdrs.end_of_stream:
            return self._decided(self._decide(None), None)
        if self.req_mode == FULL_DUPLEX_STREAMED:
            return []  # the headers response waits for the whole body
        return [_REQ_HEADERS_CONTINUE]

    def _request_body(self, rb: pb.HttpBody) -> list[bytes]:
        if self.req_mode < 0:
            self.req_mode = self.service.default_request_mode
        chunk = rb.body
        if chunk:
            self.body.append(chunk)
            self.body_len += len(chunk)
            limit = self.service.max_body
            if self.body_len > limit:
                return self._reject(self.director.reject_too_large(limit))
        if rb.end_of_stream or rb.end_of_stream_without_message:
            return self._route_body()
        if self.req_mode != FULL_DUPLEX_STREAMED:
            return [_REQ_BODY_CONTINUE]
        return []

    def _route_body(self) -> list[bytes]:
        parts = self.body
        body = parts[0] if len(parts) == 1 else b"".join(parts)
        self.body = []
        return self._decided(self._decide(body), body)

    def _decided(self, result: Routed | Rejected | Held, body: bytes | None) -> list[bytes]:
        if isinstance(result, Held):
            self.held = result
            self.held_body = body
            return []
        if isinstance(result, Rejected):
            return self._reject(result)
        self.routed = result
        if body is None:
            return [headers_routed(result)]
        if self.req_mode != FULL_DUPLEX_STREAMED:
            return [body_routed(result)]
        out = [headers_routed(result)]
        n = len(body)
        if n <= _STREAM_CHUNK:
            out.append(_streamed("request_body", body, True))
        else:
            for off in range(0, n, _STREAM_CHUNK):
                end = off + _STREAM_CHUNK >= n
                out.append(_streamed("request_body", body[off : off + _STREAM_CHUNK], end))
        return out

    def _response_headers(self, req: pb.ProcessingRequest) -> list[bytes]:
        if self.resp_mode < 0 and req.HasField("protocol_config"):
            self.resp_mode = req.protocol_config.response_body_mode
        routed = self.routed
        if routed is not None:
            if req.HasField("metadata_context"):
                served = _served_address(req)
                if served is not None:
                    self.director.served_by(routed, served)
            self.status = _status_of(req.response_headers)
            if req.response_headers.end_of_stream:
                self._finish()
        return [_RESP_HEADERS_CONTINUE]

    def _response_body(self, rb: pb.HttpBody) -> list[bytes]:
        end = rb.end_of_stream or rb.end_of_stream_without_message
        if self.resp_mode == FULL_DUPLEX_STREAMED:
            if rb.body or rb.end_of_stream:
                out = [_streamed("response_body", rb.body, rb.end_of_stream)]
            elif end:
                out = [_RESP_BODY_EMPTY_END]
            else:
                out = []
        else:
            out = [_RESP_BODY_CONTINUE]
        if end:
            self._finish()
        return out


class ExtProcService:
    """The ``envoy.service.ext_proc.v3.ExternalProcessor/Process`` handler."""

    def __init__(self, director: Director, default_request_mode: int = FULL_DUPLEX_STREAMED):
        self.director = director
        self.default_request_mode = default_request_mode
        self.max_body = director.config.max_body_bytes

    def stream(self) -> StreamProcessor:
        return StreamProcessor(self)

    async def process(
        self, requests: AsyncIterator[pb.ProcessingRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        """grpc.aio entry point: drives a ``StreamProcessor`` from the request iterator."""
        proc = StreamProcessor(self)
        try:
            async for req in requests:
                for out in proc.handle(req):
                    yield out
                while proc.held is not None:
                    await asyncio.shield(proc.held.future)
                    for out in proc.resume():
                        yield out
                if proc.done:
                    return
        finally:
            proc.close()
