"""What an image holds, measured at build: Python, its libraries, the BLAS, a float32 matmul.

Run by the image builder in the new root filesystem, once per thread count (the count is in
OMP_NUM_THREADS and OPENBLAS_NUM_THREADS); prints one JSON object.
"""
import ctypes
import importlib
import json
import os
import platform
import statistics
import time

N = 1024
REPS = 9
threads = int(os.environ.get("OMP_NUM_THREADS", "1"))
out = {"python": platform.python_version(), "libraries": {}, "blas": None, "matmul": []}


def median_seconds(f):
    f()
    times = []
    for _ in range(REPS):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def gflops(seconds):
    return round(2 * N**3 / seconds / 1e9, 2)


for name in ("numpy", "scipy", "sklearn", "torch", "jax", "tokenizers", "sentencepiece"):
    try:
        out["libraries"][name] = importlib.import_module(name).__version__
    except Exception:
        pass

if "numpy" in out["libraries"]:
    import numpy as np

    try:
        lib = ctypes.CDLL("libblas.so.3")
        if hasattr(lib, "openblas_get_config"):
            lib.openblas_get_config.restype = ctypes.c_char_p
            config = lib.openblas_get_config().decode().strip()
            out["blas"] = config if config.startswith("OpenBLAS") else "OpenBLAS " + config
        else:
            out["blas"] = os.path.basename(os.path.realpath("/usr/lib/x86_64-linux-gnu/libblas.so.3"))
    except OSError:
        out["blas"] = "none found (libblas.so.3)"
    rng = np.random.default_rng(0)
    a = rng.standard_normal((N, N), dtype=np.float32)
    b = rng.standard_normal((N, N), dtype=np.float32)
    out["matmul"].append({"library": "numpy", "threads": threads, "gflops": gflops(median_seconds(lambda: a @ b))})

if "torch" in out["libraries"]:
    import torch

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(N, N, generator=g)
    b = torch.randn(N, N, generator=g)
    out["matmul"].append({"library": "torch", "threads": threads, "gflops": gflops(median_seconds(lambda: a @ b))})

print(json.dumps(out))
