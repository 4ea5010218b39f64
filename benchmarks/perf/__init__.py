"""Performance: what a step costs the optimizer itself, the batched and sharded oracle paths,
and the same on a GPU; each run as ``python -m benchmarks.perf.<name>``."""
