"""What sharing pick records costs a replica, per request, and whether batching pays.

Three replicas' exchanges on loopback (real ZMQ sockets, one process, one event loop
each taking turns): replica A records ``N`` picks and their response ends, B and C
receive and apply them (prefix index + pod loads). Timed:

* the request path of A: ``picked`` + ``done`` (encode a record, append, maybe schedule
  a flush), per request;
* A's sends: one ZMQ send per event-loop turn (the default) against one send per record
  (``batch_bytes`` 1, below what the config allows: every record flushes at once);
* B's receive path: decode + apply, per record.

    python -m bench.micro.peers
"""

from __future__ import annotations

import asyncio
import time

from bench.stack.procs import free_port
from picker.config import PeersConfig
from picker.datalayer.datastore import Datastore, Endpoint, Pool
from picker.datalayer.peers import PeerExchange
from picker.observability import Metrics
from picker.scheduling.scorers.prefix import PrefixScorer, block_hashes

PODS = [f"10.0.0.{i}:8000" for i in range(8)]
REQUESTS = 20_000
BURST = 20  # requests per event-loop turn (what a busy replica sees)


class Replica:
    def __init__(self, publish: str, endpoints: list[str], batch_bytes: int) -> None:
        self.pods = [Endpoint(a) for a in PODS]
        self.prefix = PrefixScorer()
        cfg = PeersConfig(
            publish=publish,
            endpoints=endpoints,
            id=publish,
            batch_bytes=batch_bytes,
            max_message_bytes=4 << 20,
        )
        self.ex = PeerExchange(
            cfg,
            Datastore([Pool("p", self.pods)]),
            Metrics(),
            layout=1,
            on_pick=self.prefix.on_peer_pick,
        )

    def received(self) -> float:
        reg = self.ex.metrics.registry
        labels = {"direction": "received", "kind": "done"}
        return reg.get_sample_value("picker_peer_records_total", labels) or 0.0


async def run(batch_bytes: int, prompts: list[list[int]]) -> dict[str, float]:
    ends = [f"tcp://127.0.0.1:{free_port()}" for _ in range(3)]
    reps = [Replica(e, ends, batch_bytes) for e in ends]
    for r in reps:
        await r.ex.start()
    try:
        while any(len(r.ex.table.peers) < 2 for r in reps):
            await asyncio.sleep(0.01)
        a, b = reps[0], reps[1]
        sends0 = a.ex._seq
        t_path = 0.0
        t0 = time.perf_counter()
        for i in range(0, REQUESTS, BURST):
            s = time.perf_counter()
            for j in range(i, i + BURST):
                ep = a.pods[j % len(PODS)]
                a.ex.picked(ep, prompts[j % len(prompts)], 500)
                a.ex.done(ep, 500)
            t_path += time.perf_counter() - s
            await asyncio.sleep(0)  # one event-loop turn: flushes, receives
        while b.received() < REQUESTS:
            await asyncio.sleep(0.001)
        wall = time.perf_counter() - t0
        sends = a.ex._seq - sends0
    finally:
        for r in reps:
            await r.ex.stop()
    return {"path_us": t_path / REQUESTS * 1e6, "sends": sends, "wall_us": wall / REQUESTS * 1e6}


def main() -> None:
    prompts = [block_hashes(f"system prompt {i} " * 400, 128, 2048, 32, 16384) for i in range(64)]
    blocks = sum(len(p) for p in prompts) / len(prompts)
    print(f"{REQUESTS} requests (pick + done), {blocks:.0f} blocks each, 3 replicas, loopback")
    print(f"{'mode':>22} {'request path us':>16} {'sends':>7} {'wall us/request':>16}")
    for name, batch in (("one send per turn", 64 * 1024), ("one send per record", 1)):
        res = asyncio.run(run(batch, prompts))
        print(f"{name:>22} {res['path_us']:>16.2f} {res['sends']:>7.0f} {res['wall_us']:>16.1f}")


if __name__ == "__main__":
    main()
