"""picker's tests: ``unit/`` mirrors the package, ``e2e/`` runs real Envoy + picker +
simulated pods, ``bench/`` checks the benchmark harness and the simulator."""

from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures"
