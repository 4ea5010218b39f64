"""Fine-tuning benchmarks: quality of zeroth-order fine-tuning against first-order."""
