"""``python -m benchmarks.cuda``: the GPU checks, kept under the name that the instructions for
a lent GPU use; the script is :mod:`benchmarks.perf.cuda`."""
from benchmarks.perf.cuda import main

if __name__ == "__main__":
    main()
