"""Reproductions of Ruan et al., *Learning to Learn by Zeroth-Order Oracle* (ICLR 2020), and
their ablations; each run as ``python -m benchmarks.paper.<name>``."""
