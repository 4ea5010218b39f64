"""Test-wide settings."""
import os

import torch
from hypothesis import settings

# The tests' tensors are tiny: one thread avoids OpenMP start-up and spin costs, which are large
# on a 2-core machine whose other core is busy.
torch.set_num_threads(1)

# CI explores the same examples every run, so a red CI is always reproducible; local runs keep
# hypothesis's random exploration.
settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    settings.load_profile("ci")
