"""The OpenAI-compatible HTTP front of a simulated vLLM pod, and many pods in one process.

Endpoints (per pod): ``POST /v1/completions``, ``POST /v1/chat/completions`` (both with
``stream`` SSE and ``stream_options.include_usage``), ``GET /v1/models``, ``GET /health``,
``GET /metrics`` (vLLM's Prometheus names), ``POST /reset_prefix_cache`` and
``GET /sim/state`` (JSON, for debugging). KV-cache events go out over ZMQ when
``kv_events_endpoint`` is set (see ``kvevents``).
Every response carries ``x-sim-pod: <host>:<port>``, and ``x-sim-content-length``: the
request's ``content-length`` header as received ("none" when absent, e.g. chunked).

Request handling:

* ``model`` must be the base model or one of its LoRA adapters (else 404, OpenAI error
  JSON); missing ``model`` means the base model. An adapter runs as that LoRA.
* ``prompt`` may be a string, a list of token ids, or a list of strings / token-id lists.
  A list of several prompts is a *batch*: each is a separate engine request and answers
  as choice ``index`` i (as vLLM/OpenAI do); streamed chunks of different choices
  interleave.
* Output length is exactly ``max_tokens`` (``max_completion_tokens`` for chat; default
  16), as with ``ignore_eos``; the finish reason is ``length``. The generated text cycles
  through a fixed list of words, one word per token.
* ``usage`` also reports ``prompt_tokens_details.cached_tokens`` (prefix-cache hit).
* A request reaches the engine after its front end (``LatencyModel.frontend_work`` on
  the pod's one API-server loop, then ``frontend_s``); TTFT and e2e count from receipt.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from bench.sim.engine import Engine, EngineConfig
from bench.sim.exposition import Exposition
from bench.sim.latency import ApiServerLoop, LatencyModel
from bench.sim.openai import (
    Invalid,
    bad,
    complete_response,
    error,
    parse_max_tokens,
    parse_prompts,
    stream_response,
)
from bench.sim.tokenize import render_chat, tokenize

DEFAULT_MODEL = "meta-llama/Llama-3.1-8B-Instruct"


@dataclass(slots=True)
class SimPodConfig:
    """One simulated pod: its address, model, engine arguments and speed."""

    model: str = DEFAULT_MODEL
    host: str = "127.0.0.1"
    port: int = 0  # 0: any free port
    speed: float = 1.0
    time_scale: float = 1.0
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    num_blocks: int = 26000
    block_size: int = 16
    enable_prefix_caching: bool = True
    lora_adapters: tuple[str, ...] = ()
    max_loras: int = 1
    max_model_len: int = 131072
    latency: LatencyModel = field(default_factory=LatencyModel)
    kv_events_endpoint: str | None = None  # ZMQ PUB bind address, e.g. tcp://*:5557
    # What rendering /metrics costs the pod, in simulated ms: vLLM 0.32 takes ~10 ms on
    # its API server's event loop. The answer comes that much later, requests' front ends
    # wait behind it, and a working engine loses that time from its next step. Requests
    # with ``x-sim-free: 1`` (the harness's own observation) cost nothing.
    metrics_render_ms: float = 0.0

    def engine_config(self) -> EngineConfig:
        return EngineConfig(
            max_num_seqs=self.max_num_seqs,
            max_num_batched_tokens=self.max_num_batched_tokens,
            num_blocks=self.num_blocks,
            block_size=self.block_size,
            enable_prefix_caching=self.enable_prefix_caching,
            max_loras=self.max_loras,
            max_model_len=self.max_model_len,
            speed=self.speed,
            time_scale=self.time_scale,
            latency=self.latency,
        )


_ids = itertools.count()


class SimPod:
    """One simulated vLLM server: an engine plus an aiohttp site on its own port."""

    def __init__(self, config: SimPodConfig) -> None:
        self.config = config
        self.engine = Engine(config.engine_config())
        self.api_loop = ApiServerLoop()  # front ends, renders, streaming: one at a time
        self.engine.api_loop = self.api_loop
        self.rng = random.Random(f"{config.model}:{config.host}:{config.port}")  # jitter
        self.exposition = Exposition(self.engine, config.model)
        self.exposition.observation = self._observation
        self.metrics_renders = 0  # /metrics answers that cost the pod (not the harness's)
        self.metrics_render_seconds = 0.0  # simulated seconds they cost
        self.exposition.lora_enabled = bool(config.lora_adapters)
        self.models = {config.model: None, **{a: a for a in config.lora_adapters}}
        self.address = f"{config.host}:{config.port}"
        self.kv_events: Any = None
        self._runner: web.AppRunner | None = None
        self._created = int(time.time())

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._list_models)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/sim/state", self._state)
        app.router.add_post("/reset_prefix_cache", self._reset_prefix_cache)
        app.on_response_prepare.append(self._stamp)
        self.engine.start()
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        self._runner = runner
        family = socket.AF_INET6 if ":" in self.config.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.config.host, self.config.port))
        except OSError:
            sock.close()
            raise
        port = sock.getsockname()[1]
        await web.SockSite(runner, sock, backlog=1024).start()
        self.address = f"{self.config.host}:{port}"
        if self.config.kv_events_endpoint:
            from bench.sim.kvevents import KVEventPublisher

            self.kv_events = KVEventPublisher(
                self.config.kv_events_endpoint,
                topic=f"kv@{self.address}@{self.config.model}",
                block_size=self.config.block_size,
                lora_ids={a: i + 1 for i, a in enumerate(self.config.lora_adapters)},
            )
            self.kv_events.attach(self.engine)

    async def stop(self) -> None:
        await self.engine.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.kv_events is not None:
            self.kv_events.close()
            self.kv_events = None

    # ---- handlers ------------------------------------------------------------------------

    async def _stamp(self, request: web.Request, response: web.StreamResponse) -> None:
        response.headers["x-sim-pod"] = self.address
        response.headers["x-sim-content-length"] = request.headers.get("content-length", "none")

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response()

    def _observation(self) -> tuple[int, float]:
        return self.metrics_renders, self.metrics_render_seconds

    async def _metrics(self, request: web.Request) -> web.Response:
        render = self.config.metrics_render_ms / 1000.0
        if render and request.headers.get("x-sim-free") != "1":
            self.metrics_renders += 1
            self.metrics_render_seconds += render
            self.engine.stall(render)
            now = self.engine.now()
            done = self.api_loop.occupy(now, render)
            await asyncio.sleep((done - now) / self.config.time_scale)
        return web.Response(
            text=self.exposition.render(), content_type="text/plain", charset="utf-8"
        )

    async def _state(self, request: web.Request) -> web.Response:
        e = self.engine
        st = e.stats
        body = {
            "address": self.address,
            "sim_time": e.now(),
            "running": e.num_running,
            "waiting": e.num_waiting,
            "kv_cache_usage": e.pool.usage,
            "free_blocks": e.pool.num_free,
            "cached_blocks": len(e.pool.cached),
            "prefix_queries": st.prefix_queries,
            "prefix_hits": st.prefix_hits,
            "preemptions": st.preemptions,
            "steps": st.steps,
            "running_loras": sorted(e.running_loras),
        }
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    async def _reset_prefix_cache(self, request: web.Request) -> web.Response:
        """Forgets cached prefixes of idle blocks (vLLM's dev endpoint of the same name)."""
        self.engine.pool.reset()
        if self.kv_events is not None:
            self.kv_events.cleared()
            self.kv_events.flush()
        return web.Response()

    async def _list_models(self, request: web.Request) -> web.Response:
        base = self.config.model
        data: list[dict[str, Any]] = [
            {
                "id": name,
                "object": "model",
                "created": self._created,
                "owned_by": "vllm",
                "root": base if lora is None else lora,
                "parent": None if lora is None else base,
                "max_model_len": self.config.max_model_len,
                "permission": [],
            }
            for name, lora in self.models.items()
        ]
        return web.Response(
            body=orjson.dumps({"object": "list", "data": data}), content_type="application/json"
        )

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=False)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=True)

    async def _generate(self, request: web.Request, chat: bool) -> web.StreamResponse:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError as exc:
            return bad(f"Invalid JSON body: {exc}")
        if not isinstance(body, dict):
            return bad("The request body must be a JSON object.")
        model = body.get("model", self.config.model)
        if not isinstance(model, str) or model not in self.models:
            return error(404, f"The model `{model}` does not exist.", "NotFoundError", "model")
        try:
            if chat:
                messages = body.get("messages")
                if not isinstance(messages, list) or not messages:
                    raise Invalid("messages must be a non-empty list", "messages")
                prompts = [tokenize(render_chat(messages))]
            else:
                prompts = parse_prompts(body.get("prompt"))
            max_tokens = parse_max_tokens(body, chat)
        except (Invalid, ValueError) as exc:
            return bad(str(exc), getattr(exc, "param", None))
        engine = self.engine
        for p in prompts:
            reason = engine.capacity_error(len(p), max_tokens)
            if reason is not None:
                return bad(reason)
        stream = bool(body.get("stream"))
        opts = body.get("stream_options")
        include_usage = isinstance(opts, dict) and bool(opts.get("include_usage"))
        event = asyncio.Event()
        rid = ("chatcmpl-" if chat else "cmpl-") + f"{next(_ids):x}{id(event) & 0xFFFFFF:x}"
        lora = self.models[model]
        # The front end (LatencyModel): event-loop work, then latency, no engine time; the
        # engine takes the request when it is through (in simulated time).
        lat = self.config.latency
        received = engine.now()
        work = lat.frontend_work(sum(map(len, prompts)))
        ready = self.api_loop.occupy(received, work) + lat.frontend_s
        if lat.frontend_jitter_s:
            ready += self.rng.expovariate(1.0 / lat.frontend_jitter_s)
        engine.stall(lat.frontend_engine_share * work)  # a working engine's loss, if any
        reqs = [
            engine.add_request(p, max_tokens, lora, event, f"{rid}-{i}", stream, ready, received)
            for i, p in enumerate(prompts)
        ]
        try:
            if stream:
                return await stream_response(request, reqs, event, rid, model, chat, include_usage)
            return await complete_response(reqs, event, rid, model, chat)
        finally:
            for r in reqs:
                if not r.finished:
                    engine.abort(r)


class SimCluster:
    """Pods started together in this process; ``await cluster.stop()`` ends them all."""

    def __init__(self, pods: list[SimPod]) -> None:
        self.pods = pods

    @property
    def addresses(self) -> list[str]:
        return [p.address for p in self.pods]

    @property
    def urls(self) -> list[str]:
        return [p.url for p in self.pods]

    async def stop(self) -> None:
        await asyncio.gather(*(p.stop() for p in self.pods), return_exceptions=True)

    async def __aenter__(self) -> SimCluster:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def start_pods(configs: Sequence[SimPodConfig]) -> SimCluster:
    """Starts one pod per config (engines + HTTP sites) in the running loop."""
    pods: list[SimPod] = []
    try:
        for cfg in configs:
            pod = SimPod(cfg)
            pods.append(pod)
            await pod.start()
    except BaseException:
        await SimCluster(pods).stop()
        raise
    return SimCluster(pods)
