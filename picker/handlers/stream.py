"""The ext_proc stream machine: one HTTP request's stream, sans-IO.

One stream per HTTP request. Envoy sends the request headers, the body (one message when
BUFFERED, many when FULL_DUPLEX_STREAMED), maybe trailers, then the response side.
``StreamProcessor`` reassembles the body, asks the ``Director`` where to route, and
returns the messages to answer with (built by ``picker.handlers.protocol``). It does no
I/O: a transport feeds it decoded messages and writes what it returns.
"""

from __future__ import annotations

import logging

from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from picker.handlers.protocol import (
    FULL_DUPLEX_STREAMED,
    LEGACY_OBJECTIVE_HEADER,
    OBJECTIVE_HEADER,
    REQ_BODY_CONTINUE,
    REQ_HEADERS_CONTINUE,
    REQ_TRAILERS_CONTINUE,
    RESP_BODY_CONTINUE,
    RESP_BODY_EMPTY_END,
    RESP_HEADERS_CONTINUE,
    RESP_TRAILERS_CONTINUE,
    SLO_TPOT_HEADER,
    SLO_TTFT_HEADER,
    STREAM_CHUNK,
    body_routed,
    header_value,
    headers_routed,
    immediate,
    response_headers_set,
    served_address,
    status_of,
    streamed,
    subset_hint,
)
from picker.requestcontrol.director import Director, Held, Rejected, Routed
from picker.scheduling.testing import SELECTION_HEADER

log = logging.getLogger(__name__)


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
        "resp_mode",
        "routed",
        "selection",
        "service",
        "slo",
        "status",
        "subset",
    )

    def __init__(self, service: ExtProcService) -> None:
        self.service = service
        self.director = service.director
        self.path = "/"
        self.objective: str | None = None
        self.selection: str | None = None  # the conformance tests' selection header
        self.slo: tuple[str, str] | None = None  # raw (TTFT ms, TPOT ms) targets, if sent
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
                endpoint_selection=self.selection,
                slo=self.slo,
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
                out.append(REQ_TRAILERS_CONTINUE)
                return out
            return [REQ_TRAILERS_CONTINUE]
        if which == "response_trailers":
            self._finish()
            return [RESP_TRAILERS_CONTINUE]
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
            self.subset = subset_hint(req)
        hdrs = req.request_headers
        for h in hdrs.headers.headers:
            key = h.key
            if key == ":path":
                self.path = header_value(h)
            elif key == OBJECTIVE_HEADER:
                self.objective = header_value(h)
            elif key == LEGACY_OBJECTIVE_HEADER:
                if self.objective is None:
                    self.objective = header_value(h)
            elif key == SELECTION_HEADER:
                self.selection = header_value(h)
            elif key == SLO_TTFT_HEADER:
                self.slo = (header_value(h), self.slo[1] if self.slo else "")
            elif key == SLO_TPOT_HEADER:
                self.slo = (self.slo[0] if self.slo else "", header_value(h))
        if hdrs.end_of_stream:
            return self._decided(self._decide(None), None)
        if self.req_mode == FULL_DUPLEX_STREAMED:
            return []  # the headers response waits for the whole body
        return [REQ_HEADERS_CONTINUE]

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
            return [REQ_BODY_CONTINUE]
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
        rewritten = result.request.body  # a model rewrite's body, else None
        if self.req_mode != FULL_DUPLEX_STREAMED:
            return [body_routed(result, rewritten)]
        if rewritten is None:
            out = [headers_routed(result)]
        else:
            body = rewritten
            out = [headers_routed(result, len(body))]
        n = len(body)
        if n <= STREAM_CHUNK:
            out.append(streamed("request_body", body, True))
        else:
            for off in range(0, n, STREAM_CHUNK):
                end = off + STREAM_CHUNK >= n
                out.append(streamed("request_body", body[off : off + STREAM_CHUNK], end))
        return out

    def _response_headers(self, req: pb.ProcessingRequest) -> list[bytes]:
        if self.resp_mode < 0 and req.HasField("protocol_config"):
            self.resp_mode = req.protocol_config.response_body_mode
        routed = self.routed
        if routed is None:
            return [RESP_HEADERS_CONTINUE]
        served = served_address(req) if req.HasField("metadata_context") else None
        if served is not None:
            self.director.served_by(routed, served)
        self.status = status_of(req.response_headers)
        if req.response_headers.end_of_stream:
            self._finish()
        profile = self.director.profile
        if profile.writes_response_headers:
            return [response_headers_set(profile.response_headers(routed.request, served))]
        return [RESP_HEADERS_CONTINUE]

    def _response_body(self, rb: pb.HttpBody) -> list[bytes]:
        end = rb.end_of_stream or rb.end_of_stream_without_message
        if self.resp_mode == FULL_DUPLEX_STREAMED:
            if rb.body or rb.end_of_stream:
                out = [streamed("response_body", rb.body, rb.end_of_stream)]
            elif end:
                out = [RESP_BODY_EMPTY_END]
            else:
                out = []
        else:
            out = [RESP_BODY_CONTINUE]
        if end:
            self._finish()
        return out


class ExtProcService:
    """The ``envoy.service.ext_proc.v3.ExternalProcessor/Process`` handler: a factory of
    stream machines sharing one director."""

    def __init__(self, director: Director, default_request_mode: int = FULL_DUPLEX_STREAMED):
        self.director = director
        self.default_request_mode = default_request_mode
        self.max_body = director.config.max_body_bytes

    def stream(self) -> StreamProcessor:
        return StreamProcessor(self)
