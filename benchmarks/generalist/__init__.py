"""The generalist ZOLSTM on problem families it never saw (``python -m benchmarks.generalist``,
the same as ``python -m benchmarks.generalist.heldout``)."""
