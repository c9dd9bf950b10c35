"""Per-request cost of exact chat prompts (precise_prefix): render the model's chat
template and encode the text as vLLM does, cold and with the piece cache.

    python -m bench.micro.chat [--system-tokens 2000] [-n 200]

The model is the test fixture's (``tests/fixtures/chat_tokens``: the tiny BPE of
``bench.realvllm``, 1,029 tokens, its tools-aware template). Each request is a shared
system prompt of about ``--system-tokens`` tokens plus a short user message that is new
every time (so only the system prompt can come from the cache). Columns, µs per request:

* ``render``: the template alone;
* ``uncached``: render + the tokenizer on the whole text (no cache at all);
* ``cold``: render + piece-wise encoding with an empty cache (a system prompt seen for
  the first time: it is encoded and stored);
* ``cached``: render + piece-wise encoding, the system prompt's piece in the cache;
* ``hash``: vLLM's block hashes of the ids (sha256), for scale: what precise_prefix does
  next.

Then the cache's memory: its estimate per stored system prompt against what tracemalloc
sees, and the bound (``chat_cache_bytes``) with the fixed table of shared ints.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import tracemalloc
from collections.abc import Callable, Sequence
from pathlib import Path

from tokenizers import Tokenizer

from picker.datalayer.vllm_blocks import BlockHasher
from picker.request.chat_template import ChatTemplate
from picker.request.chat_tokens import DEFAULT_CACHE_BYTES, ChatTokenizer
from picker.request.parse import parse_request
from picker.request.types import ChatInput

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "tests" / "fixtures" / "chat_tokens"
_WORDS = (  # noqa: SIM905 - a word list
    "the model token cache prefix block request server router pod gateway user system "
    "question answer please explain why how what fast slow large small first last next "
    "number text code python data memory compute schedule queue batch decode prefill"
).split()


def words(n: int, rng: random.Random) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(n))


def chat(system: str, rng: random.Random) -> ChatInput:
    body = {
        "model": "m",
        "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": "Question: " + words(25, rng) + "?"},
        ],
    }
    req = parse_request("/v1/chat/completions", json.dumps(body).encode())
    assert req.chat is not None
    return req.chat


def timed(fn: Callable[[], object], n: int) -> float:
    """Median µs of ``n`` calls."""
    out: list[float] = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    out.sort()
    return out[len(out) // 2] * 1e6


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.micro.chat", description=__doc__)
    ap.add_argument("--system-tokens", type=int, default=2000)
    ap.add_argument("-n", type=int, default=200, help="requests per measurement")
    args = ap.parse_args(argv)
    rng = random.Random(0)
    tok = Tokenizer.from_file(str(MODEL / "tokenizer.json"))
    ct = ChatTokenizer(tok, ChatTemplate.from_dir(MODEL))
    hasher = BlockHasher(128, "sha256", "0")
    # about one token per word with this vocabulary: calibrate on the tokenizer itself
    system = "You are a helpful assistant. " + words(args.system_tokens, rng)
    while len(tok.encode(system, add_special_tokens=False).ids) > args.system_tokens:
        system = system[: int(len(system) * 0.97)]
    chats = [chat(system, rng) for _ in range(args.n)]
    it = iter(chats * 6)
    ids = ct.encode(chats[0])
    assert ct.encode_whole(ct.template.render(chats[0])) == ids

    def cold() -> None:
        ct.cache.clear()
        ct.encode(next(it))

    results = {
        "render": timed(lambda: ct.template.render(next(it)), args.n),
        "uncached": timed(lambda: ct.encode_whole(ct.template.render(next(it))), args.n),
        "cold": timed(cold, args.n),
    }
    ct.encode(chats[0])  # the system prompt's piece is in the cache from here on
    results["cached"] = timed(lambda: ct.encode(next(it)), args.n)
    results["hash"] = timed(lambda: hasher.hashes(ids), args.n)
    print(f"prompt: {len(ids)} tokens ({len(ct.template.render(chats[0]))} characters)")
    print("  ".join(f"{k} {v:,.0f}" for k, v in results.items()), "(µs per request, median)")

    # memory: distinct system prompts into a fresh cache
    prompts = 50
    fresh = ChatTokenizer(tok, ChatTemplate.from_dir(MODEL))
    distinct = [chat(f"System {i}. " + system, rng) for i in range(prompts)]
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for c in distinct:
        fresh.encode(c)  # system prompt, user message and template pieces
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    est = fresh.cache.bytes
    vocab = tok.get_vocab_size(with_added_tokens=True)
    table = sys.getsizeof(list(range(vocab))) + 32 * vocab  # list slots + int objects
    print(
        f"cache: {prompts} chats with distinct ~{args.system_tokens}-token system prompts "
        f"({len(fresh.cache)} pieces): estimate {est / prompts / 1024:.1f} KiB per chat, "
        f"tracemalloc {used / prompts / 1024:.1f} KiB; "
        f"bound chat_cache_bytes = {DEFAULT_CACHE_BYTES / 2**20:.0f} MiB (~"
        f"{DEFAULT_CACHE_BYTES // (est // prompts):,} such prompts) + the shared int table "
        f"{table / 1024:.0f} KiB ({vocab:,} ids; ~36 B per vocabulary entry)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
