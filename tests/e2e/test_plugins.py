"""An out-of-tree scorer, installed as an entry point, routes real traffic through Envoy."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import aiohttp
import yaml

from bench.stack.client import send
from bench.stack.gateway import MODEL, Stack
from bench.stack.plugins import entry_point_dist
from bench.stack.procs import ROOT

PINNED = {"pinned": "tests.plugins.pinned:PinnedScorer"}


async def test_out_of_tree_scorer_decides() -> None:
    scheduler = {
        "plugins": [{"type": "pinned", "name": "low-port", "parameters": {"prefer": "lowest"}}],
        "scorers": {"low-port": 1},
        "picker": "max_score",
    }
    with Stack(
        pods=3, time_scale=10.0, picker_config={"scheduler": scheduler}, plugins=PINNED
    ) as st:
        lowest = min(st.pod_addresses, key=lambda a: int(a.rsplit(":", 1)[1]))
        async with aiohttp.ClientSession() as s:
            body = {"model": MODEL, "prompt": "which pod?", "max_tokens": 2}
            outs = [await send(s, st.url + "/v1/completions", body) for _ in range(12)]
    assert all(o.ok for o in outs), [o.error for o in outs if not o.ok]
    # With the built-in default every pod would take a share; the plugin sends all to one.
    assert Counter(o.pod for o in outs) == Counter({lowest: 12})


def test_unknown_parameter_of_a_plugin_stops_start_up(tmp_path: Path) -> None:
    where = entry_point_dist(tmp_path / "site", PINNED)
    cfg = {
        "pools": [{"name": "p", "endpoints": ["127.0.0.1:1"]}],
        "scheduler": {"plugins": [{"type": "pinned", "parameters": {"prefr": "x"}}]},
    }
    path = tmp_path / "picker.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.run(
        [sys.executable, "-m", "picker", "serve", "--config", str(path)],
        env={"PYTHONPATH": f"{where}:{ROOT}", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "plugin 'pinned': unknown parameter 'prefr'" in proc.stderr
