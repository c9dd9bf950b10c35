"""Per-request cost of the approximate prefix index, by prompt length.

For each prompt size, times the three things the prefix scorer does per request —
hash the prompt's blocks, match them against the index, record them for the chosen pod
— on an index that already holds the prompt (the common case: a shared system prompt).

    python -m bench.micro.prefix
"""

from __future__ import annotations

import random
import time

from picker.datalayer.datastore import Endpoint
from picker.request.types import InferenceRequest
from picker.scheduling.scorers.prefix import PrefixScorer, block_hashes


def prompt(tokens: int, rng: random.Random) -> str:
    # ~4 characters per token, like English text under a Llama tokenizer.
    return " ".join(f"w{rng.randrange(1000):03d}" for _ in range(tokens))


def main() -> None:
    rng = random.Random(0)
    pods = [Endpoint(address=f"10.0.0.{i}:8000") for i in range(8)]
    print(f"{'prompt tokens':>13} {'blocks':>7} {'hash us':>8} {'match us':>9} {'record us':>10}")
    for tokens in (200, 2000, 8000, 32000):
        scorer = PrefixScorer()
        text = prompt(tokens, rng)
        first = InferenceRequest(model="m", prompt=text)
        scorer.produce(first, pods)
        scorer.on_pick(first, pods[3])
        n = max(20, 20000 // tokens)
        t_hash = t_match = t_record = 0.0
        hashes: list[int] = []
        for _ in range(n):
            req = InferenceRequest(model="m", prompt=text)
            t0 = time.perf_counter()
            hashes = block_hashes(
                text,
                scorer.block_chars,
                scorer.max_blocks,
                scorer.double_every,
                scorer.max_block_chars,
            )
            t1 = time.perf_counter()
            scorer.produce(req, pods)  # hashes again, then matches: match = t2 - t1 - hash
            scorer.score(req, pods)
            t2 = time.perf_counter()
            scorer.on_pick(req, pods[3])
            t3 = time.perf_counter()
            t_hash += t1 - t0
            t_match += (t2 - t1) - (t1 - t0)
            t_record += t3 - t2
        print(
            f"{tokens:13d} {len(hashes):7d} {t_hash / n * 1e6:8.0f} "
            f"{t_match / n * 1e6:9.0f} {t_record / n * 1e6:10.0f}"
        )


if __name__ == "__main__":
    main()
