"""PNG charts of a comparison (matplotlib, Agg backend; ``pip install matplotlib``).

* ``<workload>_load.png``: TTFT p90 and output throughput vs offered load, per target.
* ``<workload>_<rate>_pods.png``: requests waiting + running per pod over time, one
  panel per target.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def plot_all(results: Sequence[dict[str, Any]], out_dir: Path) -> list[Path]:
    """Writes the charts into ``out_dir``; returns their paths ([] without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    workloads = sorted({str(r["workload"]) for r in results})
    for wl in workloads:
        runs = [r for r in results if r["workload"] == wl]
        targets = list(dict.fromkeys(str(r["target"]) for r in runs))
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
        for t in targets:
            pts = sorted((r for r in runs if r["target"] == t), key=lambda r: r["rate"] or 0)
            xs = [r["rate"] or 0 for r in pts]
            ax1.plot(xs, [_ms((r.get("ttft") or {}).get("p90")) for r in pts], "o-", label=t)
            ax2.plot(xs, [r.get("output_tokens_per_s") or 0 for r in pts], "o-", label=t)
        ax1.set(xlabel="offered load (req/s)", ylabel="TTFT p90 (ms)", title=f"{wl}: TTFT p90")
        ax2.set(xlabel="offered load (req/s)", ylabel="output tokens/s", title=f"{wl}: throughput")
        ax1.legend(fontsize=8)
        ax1.grid(alpha=0.3)
        ax2.grid(alpha=0.3)
        fig.tight_layout()
        path = out_dir / f"{wl}_load.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
        for rate in sorted({r["rate"] or 0 for r in runs}):
            at_rate = [r for r in runs if (r["rate"] or 0) == rate and r.get("queue")]
            if not at_rate:
                continue
            fig, axes = plt.subplots(
                1, len(at_rate), figsize=(4 * len(at_rate), 3.2), sharey=True, squeeze=False
            )
            for ax, r in zip(axes[0], at_rate, strict=True):
                by_pod: dict[str, list[tuple[float, float]]] = {}
                for t, pod, waiting, running in r["queue"]["samples"]:
                    by_pod.setdefault(pod, []).append((t, waiting + running))
                for i, (_, pts2) in enumerate(sorted(by_pod.items())):
                    ax.plot([p[0] for p in pts2], [p[1] for p in pts2], label=f"pod {i}")
                ax.set(title=str(r["target"]), xlabel="s")
                ax.grid(alpha=0.3)
            axes[0][0].set_ylabel("requests waiting+running")
            axes[0][0].legend(fontsize=7)
            fig.suptitle(f"{wl} @ {rate:g} req/s: per-pod load")
            fig.tight_layout()
            path = out_dir / f"{wl}_{rate:g}_pods.png"
            fig.savefig(path, dpi=80)
            plt.close(fig)
            written.append(path)
    return written


def _ms(v: float | None) -> float:
    return float("nan") if v is None else v * 1e3
