"""Benchmarks of torchzo by purpose, each run as a module from a checkout's root:
``benchmarks.paper`` (the paper's experiments and their ablations), ``benchmarks.perf`` (what a
step costs) and ``benchmarks.generalist`` (the generalist on held-out problem families).

Each writes its raw numbers and the machine it ran on to ``docs/benchmarks/<name>.json`` and
its report, rendered from that JSON alone (each script's ``render(data)``, with the helpers of
``benchmarks._report``), to ``docs/benchmarks/<name>.md``. The baselines are
tuned by one protocol (``benchmarks._tuning``).
"""
