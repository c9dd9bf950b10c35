"""The wire format of pick records between picker replicas (``picker.datalayer.peers``).

A ZMQ message is two frames, ``[topic, payload]``. ``topic`` is ``b"P"`` for the live
stream every replica subscribes to, or ``b"S" + <subscriber nonce, 16 hex digits>`` for
the replay a publisher sends to one new subscriber. ``payload`` is one batch::

    header   version u8 (1) · kind u8 · flags u8 · layout u32 · nonce u64 · seq u64
             · sent at f64 (the sender's wall clock) · sender id (u8 length + UTF-8,
             1-64 bytes)
    records  until the end of the payload, each:
             tag u8 · address (u8 length + ASCII ``host:port``, 3-255 bytes) · body

All integers are little-endian. Record bodies by tag:

* ``PICK`` (1): uncached tokens u32 · block count u16 · that many u64 block hashes
  (the ``prefix`` plugin's chain for the request; 0 blocks: load only);
* ``DONE`` (2): uncached tokens u32 (a request the sender sent there ended);
* ``STATE`` (3): in flight u32 · tokens u32 (the sender's own absolute count there).

Batch kinds: ``LIVE`` (picks and dones, in the order they happened), ``STATE`` (the
sender's complete in-flight table, at most one record per address; it replaces what
the receiver knew; an empty one is a heartbeat) and ``REPLAY`` (the sender's recent
picks, oldest first, for the prefix index only; flag ``FINAL`` on the last one).
``layout`` identifies the prefix block layout (block sizes); a receiver with another
layout ignores the hashes. ``nonce`` is random per process start, ``seq`` counts the
sender's LIVE and STATE batches, so a receiver sees restarts and lost batches. The
send time only measures the exchange's lag (clocks of different hosts may disagree).

``decode`` accepts any bytes: everything malformed raises ``WireError`` with a short,
bounded reason (a metric label), never anything else.
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Sequence
from dataclasses import dataclass

VERSION = 1
LIVE, STATE, REPLAY = 1, 2, 3
FINAL = 1  # flags: the last batch of a replay
PICK, DONE, STATE_REC = 1, 2, 3
LIVE_TOPIC = b"P"
REPLAY_PREFIX = b"S"
MAX_ID = 64
MAX_BLOCKS = 8192
MAX_COUNT = (1 << 32) - 1
MAX_RECORD = 2 + 255 + 6 + 8 * MAX_BLOCKS  # the largest record (a PICK)

_HEADER = struct.Struct("<BBBIQQdB")
_ADDR = struct.Struct("<BB")  # tag, address length
_PICK = struct.Struct("<IH")
_U32 = struct.Struct("<I")
_STATE = struct.Struct("<II")
_SWAP = sys.byteorder != "little"


class WireError(ValueError):
    """A payload that is not a valid batch; ``reason`` is one of a few fixed words."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(slots=True)
class Record:
    tag: int
    address: str
    tokens: int
    hashes: list[int] | None = None  # PICK
    inflight: int = 0  # STATE


@dataclass(slots=True)
class Batch:
    kind: int
    flags: int
    layout: int
    nonce: int
    seq: int
    sender: str
    records: list[Record]
    sent_at: float = 0.0  # the sender's wall clock (seconds since the epoch): lag only


def replay_topic(nonce: int) -> bytes:
    """The topic of the replay meant for the subscriber with ``nonce``."""
    return REPLAY_PREFIX + b"%016x" % nonce


def header(
    kind: int,
    layout: int,
    nonce: int,
    seq: int,
    sender: bytes,
    flags: int = 0,
    sent_at: float = 0.0,
) -> bytes:
    if not 0 < len(sender) <= MAX_ID:
        raise ValueError("sender id must be 1-64 bytes")
    return _HEADER.pack(VERSION, kind, flags, layout, nonce, seq, sent_at, len(sender)) + sender


def _address(tag: int, address: bytes) -> bytes:
    return _ADDR.pack(tag, len(address)) + address


def pick(address: bytes, tokens: int, hashes: Sequence[int]) -> bytes:
    """One PICK record (at most ``MAX_BLOCKS`` hashes are kept: the chain's head)."""
    if len(hashes) > MAX_BLOCKS:
        hashes = hashes[:MAX_BLOCKS]
    blocks = array("Q", hashes)
    if _SWAP:
        blocks.byteswap()
    body = _PICK.pack(min(tokens, MAX_COUNT), len(hashes)) + blocks.tobytes()
    return _address(PICK, address) + body


def done(address: bytes, tokens: int) -> bytes:
    return _address(DONE, address) + _U32.pack(min(tokens, MAX_COUNT))


def state(address: bytes, inflight: int, tokens: int) -> bytes:
    return _address(STATE_REC, address) + _STATE.pack(
        min(inflight, MAX_COUNT), min(max(tokens, 0), MAX_COUNT)
    )


def decode(payload: bytes, max_records: int = 1 << 16) -> Batch:
    """The batch in ``payload``; ``WireError`` for anything else."""
    mv = memoryview(payload)
    n = len(mv)
    if n < _HEADER.size:
        raise WireError("short")
    version, kind, flags, layout, nonce, seq, sent_at, id_len = _HEADER.unpack_from(mv, 0)
    if version != VERSION:
        raise WireError("version")
    if kind not in (LIVE, STATE, REPLAY) or flags & ~FINAL:
        raise WireError("malformed")
    off = _HEADER.size
    if not 0 < id_len <= MAX_ID or off + id_len > n:
        raise WireError("malformed")
    try:
        sender = bytes(mv[off : off + id_len]).decode("utf-8")
    except UnicodeDecodeError:
        raise WireError("malformed") from None
    off += id_len
    records: list[Record] = []
    seen: set[str] = set()
    while off < n:
        if len(records) >= max_records or off + _ADDR.size > n:
            raise WireError("malformed")
        tag, alen = _ADDR.unpack_from(mv, off)
        off += _ADDR.size
        if alen < 3 or off + alen > n:
            raise WireError("malformed")
        raw = bytes(mv[off : off + alen])
        off += alen
        if not raw.isascii() or b":" not in raw:
            raise WireError("malformed")
        address = raw.decode("ascii")
        if tag == PICK and kind != STATE:
            if off + _PICK.size > n:
                raise WireError("malformed")
            tokens, count = _PICK.unpack_from(mv, off)
            off += _PICK.size
            end = off + 8 * count
            if count > MAX_BLOCKS or end > n:
                raise WireError("malformed")
            blocks = array("Q")
            blocks.frombytes(mv[off:end])
            if _SWAP:
                blocks.byteswap()
            off = end
            records.append(Record(PICK, address, tokens, blocks.tolist()))
        elif tag == DONE and kind == LIVE:
            if off + _U32.size > n:
                raise WireError("malformed")
            (tokens,) = _U32.unpack_from(mv, off)
            off += _U32.size
            records.append(Record(DONE, address, tokens))
        elif tag == STATE_REC and kind == STATE:
            if off + _STATE.size > n or address in seen:
                raise WireError("malformed")
            seen.add(address)
            inflight, tokens = _STATE.unpack_from(mv, off)
            off += _STATE.size
            records.append(Record(STATE_REC, address, tokens, inflight=inflight))
        else:
            raise WireError("malformed")
    return Batch(kind, flags, layout, nonce, seq, sender, records, sent_at)
