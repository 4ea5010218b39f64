"""torchzo inside the training loops people already use (optional extras).

- :mod:`torchzo.integrations.huggingface`: ``ZOTrainer``, a ``transformers.Trainer`` whose
  training step is a torchzo step (``pip install torchzo[transformers]``);
- Lightning needs nothing of its own: a ``LightningModule`` with manual optimisation calls
  ``self.optimizers().step(closure)`` (``examples/lightning_finetune.py``).

Each module imports its framework when it is imported, not before.
"""
