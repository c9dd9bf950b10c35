"""Reading an HPACK header block without decoding it (RFC 7541): does decoding it
change the dynamic table? Blocks that do not can be memoised (``h2core``)."""

from __future__ import annotations


def keeps_table(block: bytes) -> bool:
    """True when decoding ``block`` leaves the HPACK dynamic table as it was: no literal
    with incremental indexing, no table size update (RFC 7541 section 6). False also for
    a malformed block (the full decoder reports it)."""
    i, n = 0, len(block)
    try:
        while i < n:
            b = block[i]
            if b & 0x80:  # indexed field
                i = skip_int(block, i, 0x7F)
            elif b & 0xC0 == 0x40 or b & 0xE0 == 0x20:
                return False
            else:  # literal without indexing / never indexed
                if b & 0x0F == 0:  # new name: a string literal
                    i += 1
                    i = skip_string(block, i)
                else:
                    i = skip_int(block, i, 0x0F)
                i = skip_string(block, i)
    except IndexError:
        return False
    return i == n


def skip_int(block: bytes, i: int, mask: int) -> int:
    """Index after the HPACK integer starting at ``i`` (prefix ``mask``)."""
    if block[i] & mask != mask:
        return i + 1
    i += 1
    while block[i] & 0x80:
        i += 1
    return i + 1


def skip_string(block: bytes, i: int) -> int:
    """Index after the HPACK string literal (length prefix, then bytes) at ``i``."""
    length, start = read_int(block, i, 0x7F)
    end = start + length
    if end > len(block):
        raise IndexError("string past the block")
    return end


def read_int(block: bytes, i: int, mask: int) -> tuple[int, int]:
    value = block[i] & mask
    i += 1
    if value < mask:
        return value, i
    shift = 0
    while True:
        b = block[i]
        i += 1
        value += (b & 0x7F) << shift
        shift += 7
        if not b & 0x80 or shift > 28:
            return value, i
