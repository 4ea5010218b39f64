"""Benchmarks of torchzo, each run as a module: ``python -m benchmarks.<name>``.

Each writes its raw numbers and the machine it ran on to ``docs/benchmarks/<name>.json`` and
its tables to ``docs/benchmarks/<name>.md``; for example ``overhead`` (per-step time and memory
of the ZO optimizers next to ``torch.optim.Adam``).
"""
