"""Test-wide settings."""
import torch

# The tests' tensors are tiny: one thread avoids OpenMP start-up and spin costs, which are large
# on a 2-core machine whose other core is busy.
torch.set_num_threads(1)
