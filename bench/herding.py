"""Herding between scrapes: a burst of requests lands within one scrape interval.

Pods 2..N get two long requests each first (one runs, one waits: ``max_num_seqs=1``), so
the scraped state makes pod 1 look best (queue 0 against 1). Then a burst of ``--burst``
requests is sent at once. A router that trusts the last scrape alone sends the whole
burst to pod 1; picker adds the requests it sent since that scrape (and that are still
open) to each pod's queue and spreads the burst.

    python -m bench.herding [--burst 100] [--pods 4]
"""

from __future__ import annotations

import argparse
import asyncio
from collections import Counter
from typing import Any

import aiohttp

from bench.stack.client import send
from bench.stack.gateway import MODEL, Stack

PROFILES: dict[str, dict[str, Any]] = {
    "scraped queue only": {"scorers": {"scraped_queue": 1}},
    "picker (scraped + sent since)": {"scorers": {"queue": 1}},
}


async def burst(stack: Stack, n: int) -> Counter[str]:
    async with aiohttp.ClientSession() as s:
        url = stack.url + "/v1/completions"
        # Occupy every pod but the first (one running, one waiting) and let the scraper
        # see it.
        long = {"model": MODEL, "prompt": "x", "max_tokens": 2000}
        background = [
            asyncio.create_task(send(s, f"http://{pod}/v1/completions", long))
            for pod in stack.pod_addresses[1:]
            for _ in range(2)
        ]
        await asyncio.sleep(0.3)
        body = {"model": MODEL, "prompt": "burst", "max_tokens": 4}
        outs = await asyncio.gather(*(send(s, url, body) for _ in range(n)))
        for task in background:
            task.cancel()
    return Counter(o.pod for o in outs if o.ok and o.pod)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--burst", type=int, default=100)
    ap.add_argument("--pods", type=int, default=4)
    args = ap.parse_args()
    print(
        f"{'routing':32} "
        + " ".join(f"{'pod ' + str(i + 1):>6}" for i in range(args.pods))
        + f" {'max/mean':>9}"
    )
    for name, profile in PROFILES.items():
        with Stack(
            pods=args.pods,
            time_scale=10.0,
            sim_args=["--max-num-seqs", "1"],
            picker_config={"scheduler": profile, "scrape": {"interval": 0.05}},
            plugins={"scraped_queue": "bench.stack.plugins:ScrapedQueueScorer"},
        ) as stack:
            counts = asyncio.run(burst(stack, args.burst))
            per_pod = [counts.get(a, 0) for a in stack.pod_addresses]
        mean = sum(per_pod) / len(per_pod)
        print(f"{name:32} " + " ".join(f"{c:6d}" for c in per_pod) + f" {max(per_pod) / mean:9.2f}")


if __name__ == "__main__":
    main()
