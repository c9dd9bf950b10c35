"""A simulated vLLM server pool for demos, end-to-end tests and routing benchmarks.

One process hosts many simulated pods, each with its own port, engine (continuous
batching, paged KV cache with vLLM-style automatic prefix caching, LoRA slots) and
vLLM-named Prometheus metrics::

    cluster = await start_pods([SimPodConfig(time_scale=10), SimPodConfig(speed=0.5)])
    cluster.addresses            # ["127.0.0.1:41234", ...]
    cluster.pods[0].engine       # the Engine, for tests
    await cluster.stop()

or ``python -m bench.sim --pods 4 --port 8001`` (see ``__main__``).
"""

from bench.sim.engine import Engine, EngineConfig, SimRequest
from bench.sim.latency import LatencyModel
from bench.sim.server import SimCluster, SimPod, SimPodConfig, start_pods

__all__ = [
    "Engine",
    "EngineConfig",
    "LatencyModel",
    "SimCluster",
    "SimPod",
    "SimPodConfig",
    "SimRequest",
    "start_pods",
]
