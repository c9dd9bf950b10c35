"""The comparison harness behind ``python -m bench.compare``.

* ``runner``     sends a workload (bench.workloads) with its arrival times, measures each
                 request from the client side (bench.client.send).
* ``podmetrics`` scrapes the pods' ``/metrics``: counters before/after, queues over time.
* ``stats``      per-run aggregation: percentiles, throughput, errors, pod shares.
* ``targets``    what sits in front of the pods (picker, Envoy baselines, routers, URL).
* ``pods``       the simulated pods, reset or restarted between runs.
* ``report``     the Markdown table; ``plots`` the PNG charts.
"""
