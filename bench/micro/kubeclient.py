"""Which Kubernetes client for discovery: CPU per watch event and list latency.

    python -m bench.micro.kubeclient [--pods 1000] [--events 1000] [--runs 5]

The fake API server (``bench.stack.fakekube``) runs in a child process with ``--pods``
vLLM-like pods (~3 KB of JSON each, as real pods are), so this process's CPU time is
the client's alone. For each client, in this process:

* **list**: wall time and CPU time of listing every pod (one request), then decoding
  them as the client does (models for the generated clients; discovery's ``PodInfo``
  for picker's);
* **watch**: the server changes a pod ``--events`` times; CPU time of this process
  (every thread) per event received and decoded, from the first event to the last.

Clients: picker's own (aiohttp + orjson, plain dicts: ``picker.datalayer.discovery``);
``kubernetes_asyncio`` (asyncio-native, typed ``V1Pod`` models); the ``kubernetes``
client (synchronous, so on a worker thread: ``asyncio.to_thread`` for the list, a
thread feeding the loop for the watch). The generated clients are optional installs
(``pip install kubernetes kubernetes_asyncio``); a missing one is skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from bench.stack.fakekube import FakeKube
from bench.stack.procs import ROOT, free_port, wait_port

NS = "bench"
LABELS = {"app": "vllm"}


# --- the server side (child process) ----------------------------------------------------


async def serve(port: int, pods: int) -> None:
    fake = FakeKube(history=100_000)
    for i in range(pods):
        fake.add_pod(NS, f"vllm-{i:05d}", f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", LABELS)

    async def churn(request: web.Request) -> web.Response:
        n = int(request.query["n"])
        for i in range(n):
            fake.set_pod(NS, f"vllm-{i % pods:05d}", annotations={"round": str(i)})
        return web.Response(text="ok")

    def routes(app: web.Application) -> None:
        app.router.add_post("/churn", churn)

    await fake.start("127.0.0.1", port, routes)
    print("serving", flush=True)
    await asyncio.Event().wait()


# --- the clients ---------------------------------------------------------------------------


class Result:
    def __init__(self, name: str) -> None:
        self.name = name
        self.list_ms: list[float] = []
        self.list_cpu_ms: list[float] = []
        self.event_us: list[float] = []


async def churn(url: str, n: int) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as s, s.post(f"{url}/churn?n={n}") as r:
        await r.read()


async def measure_list(res: Result, do_list: Callable[[], Awaitable[int]], pods: int) -> None:
    wall, cpu = time.perf_counter(), time.process_time()
    n = await do_list()
    res.list_ms.append((time.perf_counter() - wall) * 1e3)
    res.list_cpu_ms.append((time.process_time() - cpu) * 1e3)
    assert n == pods, (res.name, n)


async def run_picker(url: str, pods: int, events: int, runs: int) -> Result:
    from picker.datalayer.discovery.client import KubeClient
    from picker.datalayer.discovery.kubeconfig import KubeConfig
    from picker.datalayer.discovery.objects import pod_info

    res = Result("picker: aiohttp + orjson (dicts)")
    client = KubeClient(KubeConfig(url), page_size=100_000)
    path = f"/api/v1/namespaces/{NS}/pods"
    rv = ""

    async def do_list() -> int:
        nonlocal rv
        n = 0
        async for items, version in client.list_pages(path, label_selector="app=vllm"):
            n += len([pod_info(i) for i in items])
            rv = version
        return n

    for _ in range(runs):
        await measure_list(res, do_list, pods)
    for _ in range(runs):
        got = 0
        start = 0.0
        stream = client.watch(path, resource_version=rv, label_selector="app=vllm")
        trigger = asyncio.create_task(churn(url, events))
        async for ev in stream:
            if got == 0:
                start = time.process_time()
            pod_info(ev.object)
            rv = ev.object["metadata"]["resourceVersion"]
            got += 1
            if got == events:
                break
        res.event_us.append((time.process_time() - start) / (events - 1) * 1e6)
        await stream.aclose()
        await trigger
    await client.close()
    return res


async def run_kubernetes_asyncio(
    url: str, pods: int, events: int, runs: int, raw: bool = False
) -> Result:
    import orjson
    from kubernetes_asyncio import client, watch

    from picker.datalayer.discovery.objects import pod_info

    what = "raw dicts: _preload_content=False, Watch(return_type='object')"
    res = Result(f"kubernetes_asyncio ({what if raw else 'typed models'})")
    conf = client.Configuration(host=url)
    api_client = client.ApiClient(conf)
    v1 = client.CoreV1Api(api_client)
    rv = ""

    async def do_list() -> int:
        nonlocal rv
        if raw:
            resp = await v1.list_namespaced_pod(
                NS, label_selector="app=vllm", _preload_content=False
            )
            doc = orjson.loads(await resp.read())
            rv = doc["metadata"]["resourceVersion"]
            return len([pod_info(i) for i in doc["items"]])
        pl = await v1.list_namespaced_pod(NS, label_selector="app=vllm")
        rv = pl.metadata.resource_version
        return len(pl.items)

    for _ in range(runs):
        await measure_list(res, do_list, pods)
    for _ in range(runs):
        got = 0
        start = 0.0
        w = watch.Watch(return_type="object" if raw else None)
        trigger = asyncio.create_task(churn(url, events))
        async for ev in w.stream(
            v1.list_namespaced_pod, NS, label_selector="app=vllm", resource_version=rv
        ):
            if got == 0:
                start = time.process_time()
            if raw:
                pod_info(ev["raw_object"])
                rv = ev["raw_object"]["metadata"]["resourceVersion"]
            else:
                rv = ev["object"].metadata.resource_version
            got += 1
            if got == events:
                break
        res.event_us.append((time.process_time() - start) / (events - 1) * 1e6)
        await w.close()
        await trigger
    await api_client.close()
    return res


async def run_kubernetes_sync(url: str, pods: int, events: int, runs: int) -> Result:
    from kubernetes import client, watch

    res = Result("kubernetes, sync on threads (typed models)")
    conf = client.Configuration(host=url)
    api_client = client.ApiClient(conf)
    v1 = client.CoreV1Api(api_client)
    rv = ""

    async def do_list() -> int:
        nonlocal rv
        pl = await asyncio.to_thread(v1.list_namespaced_pod, NS, label_selector="app=vllm")
        rv = pl.metadata.resource_version
        return len(pl.items)

    for _ in range(runs):
        await measure_list(res, do_list, pods)
    loop = asyncio.get_running_loop()
    for _ in range(runs):
        queue: asyncio.Queue[Any] = asyncio.Queue()
        w = watch.Watch()

        def pump(since: str, w: Any, queue: asyncio.Queue[Any]) -> None:
            """The thread: blocking reads, each event handed to the loop."""
            try:
                for ev in w.stream(
                    v1.list_namespaced_pod, NS, label_selector="app=vllm", resource_version=since
                ):
                    loop.call_soon_threadsafe(queue.put_nowait, ev)
                    if w._stop:
                        break
            except Exception:  # the server going away at the end
                pass

        thread = threading.Thread(target=pump, args=(rv, w, queue), daemon=True)
        thread.start()
        trigger = asyncio.create_task(churn(url, events))
        got = 0
        start = 0.0
        while got < events:
            ev = await queue.get()
            if got == 0:
                start = time.process_time()
            rv = ev["object"].metadata.resource_version
            got += 1
        res.event_us.append((time.process_time() - start) / (events - 1) * 1e6)
        w.stop()
        await trigger
        await churn(url, 1)  # one more event lets the thread see the stop flag
        await asyncio.to_thread(thread.join, 10)
    api_client.close()
    return res


async def raw_kubernetes_asyncio(url: str, pods: int, events: int, runs: int) -> Result:
    return await run_kubernetes_asyncio(url, pods, events, runs, raw=True)


def import_seconds(module: str) -> str:
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    times = []
    for _ in range(3):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        if out.returncode:
            return "not installed"
        times.append(float(out.stdout))
    return f"{statistics.median(times):.2f}"


def report(results: list[Result], pods: int, events: int) -> None:
    print(f"\n{pods} pods listed, {events} watch events; median (min-max) of the runs\n")
    print("| client | list ms | list CPU ms | CPU µs per watch event |")
    print("|---|---|---|---|")
    for r in results:

        def fmt(xs: list[float], digits: int = 1) -> str:
            return f"{statistics.median(xs):.{digits}f} ({min(xs):.{digits}f}-{max(xs):.{digits}f})"

        print(f"| {r.name} | {fmt(r.list_ms)} | {fmt(r.list_cpu_ms)} | {fmt(r.event_us, 0)} |")


async def main_async(args: argparse.Namespace) -> None:
    port = free_port()
    child = subprocess.Popen(
        [sys.executable, "-m", "bench.micro.kubeclient", "--serve", str(port),
         "--pods", str(args.pods)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert child.stdout is not None
        child.stdout.readline()
        wait_port(port)
        url = f"http://127.0.0.1:{port}"
        results = []
        runners: list[Callable[..., Awaitable[Result]]] = [run_picker]
        runners += [run_kubernetes_asyncio, raw_kubernetes_asyncio, run_kubernetes_sync]
        for runner in runners:
            try:
                results.append(await runner(url, args.pods, args.events, args.runs))
            except ImportError as e:
                print(f"skipped {runner.__name__}: {e}")
        report(results, args.pods, args.events)
        print("\nimport time, s (median of 3 fresh interpreters):")
        for module in ("aiohttp", "kubernetes_asyncio.client", "kubernetes.client"):
            print(f"  {module}: {import_seconds(module)}")
    finally:
        child.terminate()
        child.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pods", type=int, default=1000)
    ap.add_argument("--events", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve, args.pods))
    else:
        asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
