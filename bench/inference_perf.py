"""Cross-check of the harness against inference-perf (kubernetes-sigs) on one workload.

Runs inference-perf's ``shared_prefix`` data generator with a Poisson load against a
picker stack (sim pods + picker + Envoy), then the harness (``bench.compare``'s runner)
with the same knobs, rate and duration against a fresh stack, and prints both TTFT
percentiles and their ratio::

    python -m bench.inference_perf [--rate 20] [--duration 10] [--inference-perf PATH]

Installing inference-perf. PyPI's inference-perf (0.1.1 .. 0.7.0) declares
``Requires-Python >= 3.12``; this project's venv is 3.11. It runs on 3.11 all the same,
installed into its own venv (its pins — transformers 5.x, datasets, boto3, av, ... —
stay out of the project's)::

    python3 -m venv /tmp/ip-venv
    /tmp/ip-venv/bin/pip install --ignore-requires-python --only-binary=:all: inference-perf

(``--only-binary`` keeps pip from choosing sdists that need 3.12 or system libraries,
e.g. numpy 2.5, av.) The executable is looked up as ``--inference-perf``, then
``$INFERENCE_PERF``, then ``/tmp/ip-venv/bin/inference-perf``, then ``PATH``.

Offline. inference-perf's vLLM client always loads a Hugging Face tokenizer (by default
``server.model_name`` from the Hub). Here ``tokenizer.pretrained_model_name_or_path``
points at a local directory written by :func:`write_tokenizer`: a ``WordLevel``
``tokenizer.json`` over the harness vocabulary (``bench.workloads.VOCAB``, one word per
token — the same count the simulator's tokenizer gives) and a ``tokenizer_config.json``
(``PreTrainedTokenizerFast``); ``HF_HUB_OFFLINE=1`` makes any other Hub access fail
loudly instead of hanging. The ``shared_prefix`` generator then samples token ids from
that vocabulary, so both tools send prompts of the same shape and length.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from bench.harness import podmetrics
from bench.harness.plan import DEFAULT_KNOBS, DEFAULT_SIM_ARGS
from bench.harness.pods import SimPods
from bench.harness.runner import drive
from bench.harness.stats import summarize
from bench.harness.targets import Target, launch
from bench.harness.workloads import MODEL, VOCAB, Arrival, build

SPECIALS = ("<unk>", "<s>", "</s>")


def find_inference_perf(explicit: str = "") -> str:
    for cand in (explicit, os.environ.get("INFERENCE_PERF", ""), "/tmp/ip-venv/bin/inference-perf"):
        if cand and Path(cand).exists():
            return cand
    found = shutil.which("inference-perf")
    if found is None:
        raise SystemExit("inference-perf not found; see `python -m bench.inference_perf --help`")
    return found


def write_tokenizer(directory: Path) -> Path:
    """A local Hugging Face fast tokenizer: one token per vocabulary word."""
    directory.mkdir(parents=True, exist_ok=True)
    vocab = {tok: i for i, tok in enumerate((*SPECIALS, *VOCAB))}
    added = [
        {
            "id": i,
            "content": t,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for i, t in enumerate(SPECIALS)
    ]
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "WhitespaceSplit"},
        "post_processor": None,
        "decoder": None,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"},
    }
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": "<unk>",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "model_max_length": 131072,
    }
    (directory / "tokenizer.json").write_text(json.dumps(tokenizer))
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    return directory


def ip_config(url: str, tok_dir: Path, out_dir: Path, rate: float, duration: int) -> dict[str, Any]:
    k = DEFAULT_KNOBS["shared_prefix"]
    return {
        "api": {"type": "completion", "streaming": True},
        "data": {
            "type": "shared_prefix",
            "shared_prefix": {
                "num_groups": k["groups"],
                "num_prompts_per_group": k["prompts_per_group"],
                "system_prompt_len": k["system_len"],
                "question_len": k["question_len"],
                "output_len": k["output_len"],
            },
        },
        "load": {
            "type": "poisson",
            "stages": [{"rate": rate, "duration": duration}],
            "num_workers": 1,
        },
        "server": {"type": "vllm", "model_name": MODEL, "base_url": url, "ignore_eos": True},
        "tokenizer": {"pretrained_model_name_or_path": str(tok_dir)},
        "report": {"request_lifecycle": {"summary": True, "per_stage": False}},
        "storage": {"local_storage": {"path": str(out_dir)}},
    }


def run_inference_perf(exe: str, cfg: dict[str, Any], work: Path) -> dict[str, Any]:
    """Runs inference-perf with ``cfg``; returns its summary report (JSON)."""
    path = work / "ip-config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    proc = subprocess.run(
        [exe, "--config_file", str(path)],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    (work / "ip.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"inference-perf failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    reports = sorted(Path(cfg["storage"]["local_storage"]["path"]).rglob("summary_lifecycle*.json"))
    if not reports:
        raise RuntimeError(f"no inference-perf summary report in {work}:\n{proc.stdout[-2000:]}")
    data: dict[str, Any] = json.loads(reports[-1].read_text())
    return data


def ip_ttft(report: dict[str, Any]) -> dict[str, float]:
    """TTFT mean/p50/p90/p99 (seconds) from an inference-perf summary report."""
    ttft = report.get("successes", {}).get("latency", {}).get("time_to_first_token", {})
    ttft = {**ttft, "p50": ttft.get("p50", ttft.get("median"))}
    return {k: float(ttft[k]) for k in ("mean", "p50", "p90", "p99") if ttft.get(k) is not None}


async def harness_ttft(url: str, pods: list[str], rate: float, duration: float) -> dict[str, Any]:
    arrival = Arrival("poisson", rate=rate)
    specs = build(
        "shared_prefix", arrival.count_for(duration), 1, arrival, **DEFAULT_KNOBS["shared_prefix"]
    )
    records, elapsed = await drive(url, specs)
    before: dict[str, dict[str, float]] = {}
    after = await podmetrics.snapshot(pods)
    return summarize(records, elapsed, podmetrics.deltas(before, after))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m bench.inference_perf",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--rate", type=float, default=20.0)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--pods", type=int, default=4)
    ap.add_argument("--inference-perf", default="", help="path of the inference-perf executable")
    ap.add_argument("--work", default="", help="directory for config, logs, reports (default tmp)")
    args = ap.parse_args(argv)
    exe = find_inference_perf(args.inference_perf)
    target = Target("picker")
    with SimPods(args.pods, MODEL, 1.0, None, list(DEFAULT_SIM_ARGS)) as sim:
        pods = sim.fresh()
        work = Path(args.work) if args.work else sim.procs.dir if sim.procs else Path(".")
        work.mkdir(parents=True, exist_ok=True)
        tok = write_tokenizer(work / "tokenizer")
        print(
            f"inference-perf ({exe}) shared_prefix @ {args.rate:g}/s for {args.duration} s ...",
            file=sys.stderr,
        )
        with launch(target, pods) as url:
            report = run_inference_perf(
                exe, ip_config(url, tok, work / "ip-reports", args.rate, args.duration), work
            )
        ip = ip_ttft(report)
        n_ip = report.get("successes", {}).get("count")
        pods = sim.start()  # fresh pods (and caches) for the harness
        print("harness, same workload ...", file=sys.stderr)
        with launch(target, pods) as url:
            ours = asyncio.run(harness_ttft(url, pods, args.rate, args.duration))
    mine = ours["ttft"]
    print(
        f"\nshared_prefix @ {args.rate:g} req/s poisson, {args.duration} s, picker, "
        f"{args.pods} pods"
    )
    print(f"requests ok: inference-perf {n_ip}, harness {ours['ok']}")
    print(f"{'TTFT ms':10} {'inference-perf':>15} {'harness':>10} {'ratio ip/h':>11}")
    for k in ("mean", "p50", "p90", "p99"):
        a, b = ip.get(k), mine.get(k)
        ratio = f"{a / b:.2f}" if a is not None and b else "-"
        a_s = "-" if a is None else f"{a * 1e3:.1f}"
        b_s = "-" if b is None else f"{b * 1e3:.1f}"
        print(f"{k:10} {a_s:>15} {b_s:>10} {ratio:>11}")


if __name__ == "__main__":
    main()
