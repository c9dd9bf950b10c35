"""Active-active picker replicas behind a real Envoy (``Stack(replicas=3,
sharing="picks")``): a replica killed under load costs only the requests it had in
flight, and a replica started later routes with the others' prefix state at once.

``pytest tests/e2e/test_replicas.py -s`` prints the counted numbers.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import urllib.request
from dataclasses import dataclass
from typing import Any

import aiohttp
import grpc
import orjson
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from prometheus_client.parser import text_string_to_metric_families

from bench.stack.client import Outcome, send
from bench.stack.gateway import MODEL, Stack
from tests.e2e.test_gateway import post_or_get


@dataclass
class Sent:
    started: float
    ended: float
    out: Outcome


def gauge(port: int, name: str, **labels: str) -> float:
    """The sum of a metric's samples (with these labels) on a picker's metrics port."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == name and labels.items() <= s.labels.items()
    )


def completion(i: int, words: int = 60) -> dict[str, Any]:
    system = f"system prompt of tenant {i % 6}: " + "be helpful and brief " * words
    return {
        "model": MODEL,
        "prompt": f"{system} question {i}",
        "max_tokens": 24,
        "stream": True,
    }


async def steady_load(
    st: Stack, victim: int, concurrency: int, before: float, after: float
) -> dict[str, Any]:
    """``concurrency`` clients in a closed loop; replica ``victim`` is SIGKILLed
    ``before`` s in, the load goes on for ``after`` s more."""
    sent: list[Sent] = []
    stop = asyncio.Event()
    counter = iter(range(1 << 30))

    async def client(session: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            t0 = time.monotonic()
            out = await send(session, f"{st.url}/v1/completions", completion(next(counter)))
            sent.append(Sent(t0, time.monotonic(), out))

    async with aiohttp.ClientSession() as session:
        tasks = [asyncio.create_task(client(session)) for _ in range(concurrency)]
        await asyncio.sleep(before)
        read_at = time.monotonic()
        port = st.picker_metrics_ports[victim]
        inflight = await asyncio.to_thread(gauge, port, "inference_objective_running_requests")
        os.kill(st.replica(victim).pid, signal.SIGKILL)
        killed_at = time.monotonic()
        await asyncio.sleep(after)
        stop.set()
        await asyncio.gather(*tasks)
    # Requests that started between the gauge read and the kill may have reached the
    # victim too: the bound on what it had in flight at the kill is the sum.
    late = sum(1 for s in sent if read_at <= s.started < killed_at)
    return {
        "sent": sent,
        "killed_at": killed_at,
        "victim_inflight": int(inflight),
        "started_between": late,
    }


def test_a_killed_replica_costs_only_its_in_flight_requests() -> None:
    with Stack(
        pods=4,
        replicas=3,
        sharing="picks",
        time_scale=2.0,
        sim_args=["--num-blocks", "4096"],
    ) as st:
        res = asyncio.run(steady_load(st, victim=1, concurrency=12, before=3.0, after=4.0))
        sent: list[Sent] = res["sent"]
        killed_at = res["killed_at"]
        failed = [s for s in sent if not s.out.ok]
        after = [s for s in sent if s.started >= killed_at]
        in_flight = [s for s in sent if s.started < killed_at < s.ended]
        bound = res["victim_inflight"] + res["started_between"]
        print(
            f"\nkill test: {len(sent)} requests, {len(in_flight)} in flight at the kill "
            f"(all replicas), the victim had {res['victim_inflight']} "
            f"(+{res['started_between']} started between its gauge read and the kill); "
            f"failed {len(failed)}; after the kill {len(after)} requests, "
            f"{sum(1 for s in after if not s.out.ok)} failed"
        )
        # Only requests in flight at the kill failed, no more than the victim had ...
        assert all(s.started < killed_at < s.ended for s in failed), [
            (s.started - killed_at, s.out.error) for s in failed
        ]
        assert len(failed) <= bound
        # ... and every later request was served by the other two replicas.
        assert len(after) > 50 and all(s.out.ok for s in after)
        assert st.replica(1).poll() == -signal.SIGKILL
        assert all(st.replica(i).poll() is None for i in (0, 2))


def _decision(port: int, body: dict[str, Any]) -> str:
    """Replica at ``port`` decides ``body``'s destination (an ext_proc stream of its
    own, not through Envoy); the stream is then cancelled (nothing is sent)."""

    async def ask() -> str:
        head = pb.ProcessingRequest()
        h = head.request_headers.headers.headers.add()
        h.key, h.raw_value = ":path", b"/v1/completions"
        head.protocol_config.request_body_mode = 4  # FULL_DUPLEX_STREAMED
        msg = pb.ProcessingRequest()
        msg.request_body.body = orjson.dumps(body)
        msg.request_body.end_of_stream = True
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub: Any = pb_grpc.ExternalProcessorStub(ch)
            call = stub.Process(iter([head, msg]))
            async for r in call:
                mutation = r.request_headers.response.header_mutation.set_headers
                for hv in mutation:
                    if hv.header.key == "x-gateway-destination-endpoint":
                        call.cancel()
                        return str(hv.header.raw_value.decode())
        raise AssertionError("no destination")

    return asyncio.run(ask())


def prompt(group: int) -> dict[str, Any]:
    """A long prompt (~1,000 tokens): its cached prefix outweighs small load differences
    in the predicted TTFT."""
    return completion(group, words=200)


def test_a_replica_started_later_routes_with_the_shared_prefix_state() -> None:
    with Stack(pods=4, replicas=3, sharing="picks", time_scale=20.0, tls=False) as st:
        os.kill(st.replica(2).pid, signal.SIGKILL)  # away while the others learn
        st.replica(2).wait()
        groups = 8
        served: dict[int, str] = {}
        for g in range(groups):
            status, headers, body = post_or_get(
                f"{st.url}/v1/completions", {**prompt(g), "stream": False, "max_tokens": 2}
            )
            assert status == 200, body
            served[g] = headers["x-sim-pod"]
        t0 = time.monotonic()
        st.start_replica(2)  # waits until it reports ready
        ready_s = time.monotonic() - t0
        port = st.picker_grpc_ports[2]
        picks = {
            g: _decision(port, {**prompt(g), "prompt": prompt(g)["prompt"] + "?"})
            for g in range(groups)
        }
        replayed = gauge(
            st.picker_metrics_ports[2],
            "picker_peer_records_total",
            direction="received",
            kind="replay",
        )
        print(
            f"\nlate replica: ready {ready_s:.2f} s after start, "
            f"{sum(picks[g] == served[g] for g in range(groups))}/{groups} groups routed "
            f"to the pod holding their prefix; {replayed:.0f} picks replayed to it"
        )
        assert picks == served
        assert replayed == groups  # each pick once, from the replica that made it
        assert ready_s < 5.0
