"""Hand-built ext_proc answers (``picker.handlers.protocol``)."""

from __future__ import annotations

from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from picker.handlers.protocol import response_headers_set


def test_setting_no_response_header_is_still_a_response_headers_answer() -> None:
    # An empty answer would be a ProcessingResponse with no oneof set: Envoy drops it as
    # "spurious" and the request waits out its timeout.
    msg = pb.ProcessingResponse.FromString(response_headers_set([]))
    assert msg.WhichOneof("response") == "response_headers"


def test_headers_are_set_with_overwrite() -> None:
    msg = pb.ProcessingResponse.FromString(response_headers_set([("x-a", "1")]))
    opts = msg.response_headers.response.header_mutation.set_headers
    assert [(o.header.key, o.header.raw_value) for o in opts] == [("x-a", b"1")]
