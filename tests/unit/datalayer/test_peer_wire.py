"""The peer record wire format: round trips, and every malformed payload is a WireError."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from picker.datalayer import peer_wire as wire

A = b"10.0.0.1:8000"
B = b"10.0.0.2:8000"


def live(*records: bytes, seq: int = 7) -> bytes:
    return wire.header(wire.LIVE, 0xABCD, 42, seq, b"replica-a") + b"".join(records)


def test_live_batch_round_trip() -> None:
    hashes = [0, 1, (1 << 64) - 1, 1234567890123]
    batch = wire.decode(live(wire.pick(A, 300, hashes), wire.done(B, 20), wire.pick(B, 5, [])))
    assert (batch.kind, batch.layout, batch.nonce, batch.seq, batch.sender) == (
        wire.LIVE,
        0xABCD,
        42,
        7,
        "replica-a",
    )
    r = batch.records
    assert [(x.tag, x.address, x.tokens) for x in r] == [
        (wire.PICK, "10.0.0.1:8000", 300),
        (wire.DONE, "10.0.0.2:8000", 20),
        (wire.PICK, "10.0.0.2:8000", 5),
    ]
    assert r[0].hashes == hashes and r[2].hashes == []


def test_state_and_replay_batches() -> None:
    state = wire.header(wire.STATE, 1, 2, 3, b"b") + wire.state(A, 4, 900) + wire.state(B, 1, 7)
    batch = wire.decode(state)
    assert [(x.address, x.inflight, x.tokens) for x in batch.records] == [
        ("10.0.0.1:8000", 4, 900),
        ("10.0.0.2:8000", 1, 7),
    ]
    assert wire.decode(wire.header(wire.STATE, 1, 2, 4, b"b")).records == []  # heartbeat
    replay = wire.header(wire.REPLAY, 1, 2, 0, b"b", wire.FINAL) + wire.pick(A, 1, [9, 8])
    batch = wire.decode(replay)
    assert batch.flags == wire.FINAL and batch.records[0].hashes == [9, 8]


def test_counts_saturate_and_long_chains_keep_their_head() -> None:
    rec = wire.pick(A, 1 << 40, list(range(wire.MAX_BLOCKS + 10)))
    (r,) = wire.decode(live(rec)).records
    assert r.tokens == wire.MAX_COUNT and r.hashes == list(range(wire.MAX_BLOCKS))


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "short"),
        (b"\x02" + live()[1:], "version"),
        (wire.header(wire.LIVE, 0, 0, 0, b"x")[:-1] + b"\xff", "malformed"),  # bad UTF-8 id
        (live(b"\x09\x0d" + A), "malformed"),  # unknown tag
        (live(wire.pick(A, 1, [1, 2]))[:-3], "malformed"),  # truncated hashes
        (live(wire.pick(b"x", 1, [])), "malformed"),  # too short to be host:port
        (live(wire.pick(b"10.0.0.1", 1, [])), "malformed"),  # no port
        (live(wire.pick("é:1".encode(), 1, [])), "malformed"),  # not ASCII
        (live(wire.state(A, 1, 1)), "malformed"),  # STATE record in a LIVE batch
        (wire.header(wire.STATE, 0, 0, 0, b"x") + wire.pick(A, 1, []), "malformed"),
        (wire.header(wire.REPLAY, 0, 0, 0, b"x") + wire.done(A, 1), "malformed"),
        (wire.header(wire.STATE, 0, 0, 0, b"x") + wire.state(A, 1, 1) * 2, "malformed"),
        (wire.header(9, 0, 0, 0, b"x"), "malformed"),  # unknown kind
        (wire.header(wire.LIVE, 0, 0, 0, b"x", flags=4), "malformed"),
    ],
)
def test_malformed_payloads_are_rejected_with_a_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(wire.WireError) as e:
        wire.decode(payload)
    assert e.value.reason == reason


def test_block_count_over_the_limit_is_rejected() -> None:
    rec = bytearray(wire.pick(A, 1, [1]))
    count_at = 2 + len(A) + 4
    rec[count_at : count_at + 2] = (wire.MAX_BLOCKS + 1).to_bytes(2, "little")
    with pytest.raises(wire.WireError):
        wire.decode(live(bytes(rec)))


def test_record_count_limit() -> None:
    payload = live(*[wire.done(A, 1)] * 11)
    assert len(wire.decode(payload, max_records=11).records) == 11
    with pytest.raises(wire.WireError):
        wire.decode(payload, max_records=10)


VALID = live(wire.pick(A, 3, [5, 6, 7]), wire.done(B, 2), wire.pick(B, 1, [1]))


def test_every_truncation_is_a_valid_prefix_or_rejected() -> None:
    boundaries = {len(live())}
    size = len(live())
    for rec in (wire.pick(A, 3, [5, 6, 7]), wire.done(B, 2), wire.pick(B, 1, [1])):
        size += len(rec)
        boundaries.add(size)
    for cut in range(len(VALID)):
        if cut in boundaries:
            assert wire.decode(VALID[:cut]).sender == "replica-a"
        else:
            with pytest.raises(wire.WireError):
                wire.decode(VALID[:cut])


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise_anything_else(data: bytes) -> None:
    with contextlib.suppress(wire.WireError):
        wire.decode(data)


@settings(max_examples=400, deadline=None)
@given(st.integers(0, len(VALID) - 1), st.integers(0, 255))
def test_single_byte_corruption_never_raises_anything_else(at: int, value: int) -> None:
    data = bytearray(VALID)
    data[at] = value
    try:
        batch = wire.decode(bytes(data))
    except wire.WireError:
        return
    for r in batch.records:  # whatever decodes is well-formed
        assert ":" in r.address and r.address.isascii()
        assert r.hashes is None or len(r.hashes) <= wire.MAX_BLOCKS
