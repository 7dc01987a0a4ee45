"""Portrait's benchmark: "fast, measured against its limit".

``python -m bench`` (``make bench``) runs every contender on the same seeded synthetic
event stream and prints one table; ``python -m bench --quick`` is a ~1 minute smoke run.
See ``bench/README.md`` for what each number means and the targets.

Modules: ``stream`` (the input), ``inproc`` (limit loop, memory, scaling), ``client``
(gRPC load generator), ``poller`` (freshness reader), ``naive_peer`` (the baseline
server), ``procs`` (child processes), ``stats`` (percentiles, /metrics parsing),
``report`` (table + JSON), ``run`` (the orchestrator).
"""
