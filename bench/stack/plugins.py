"""Out-of-tree picker plugins for experiments, and a way to install any plugin the way a
pip-installed package does: as an entry point of the ``picker.plugins`` group.

``entry_point_dist(where, {"scraped_queue": "bench.stack.plugins:ScrapedQueueScorer"})``
writes a minimal ``.dist-info`` under ``where``; with ``where`` on ``PYTHONPATH``, picker
finds the plugin through ``importlib.metadata`` exactly as it finds an installed
package's. ``Stack(plugins=...)`` does this for the picker it starts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from picker.datalayer.datastore import Endpoint
from picker.request.types import InferenceRequest
from picker.scheduling.framework import Scorer
from picker.scheduling.registry import ENTRY_POINT_GROUP
from picker.scheduling.scorers.load import inverse_scaled


def entry_point_dist(
    where: Path, entries: Mapping[str, str], name: str = "picker-bench-plugins"
) -> Path:
    """A distribution declaring ``entries`` (plugin type → ``module:attr``) under ``where``."""
    dist = where / f"{name.replace('-', '_')}-0.0.0.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.0.0\n")
    lines = [f"[{ENTRY_POINT_GROUP}]"] + [f"{k} = {v}" for k, v in entries.items()]
    (dist / "entry_points.txt").write_text("\n".join(lines) + "\n")
    return where


class ScrapedQueueScorer(Scorer):
    """The queue as last scraped, without what picker sent since: what a metrics-only
    router sees. ``bench.herding`` measures the herding this causes between scrapes."""

    type = "scraped_queue"

    def score(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> list[float]:
        return inverse_scaled([e.metrics.waiting for e in candidates], 8.0)
