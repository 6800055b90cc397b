"""Measure and cache the llama.cpp backend's latency curve t(n) for the default model (the tree
drafters size their trees from it), with the thread count given.

    python benchmarks/llamacpp/calibrate.py float32|bfloat16|q4_1 THREADS
"""

import sys
import time

import torch

from specdecode import cost
from specdecode.models.loader import load_model

fmt, threads = sys.argv[1], int(sys.argv[2])
torch.set_num_threads(threads)
loaded = load_model(None, backend="llama.cpp", dtype=None if fmt == "q4_1" else fmt)
start = time.perf_counter()
curve = cost.load_or_calibrate(loaded, max_n=64, repeats=3)
print(
    f"{loaded.name}: latency curve in {time.perf_counter() - start:.0f} s ({cost.calibration_path(loaded)})"
)
