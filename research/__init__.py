"""Prototypes and probes beside the research log (``research/log.md``): run from a checkout,
never installed."""
