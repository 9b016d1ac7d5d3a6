"""Batched sweep vs the same runs one after another, in one process (target: >= 3x).

K FCN 3x200 runs on parity (8 = 4 LRs x 2 seeds), each for `steps` steps with lrtrain's default
recording, (a) sequentially through `train_run`, (b) as one stack through `train_batched`.

    python benchmarks/batched_bench.py [steps]
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

from lrscope.train.batched import train_batched
from lrscope.train.config import RunConfig
from lrscope.train.loop import train_run


def run(steps: int = 3000, k: int = 8, **config) -> dict:
    """`config`: other RunConfig fields shared by the K runs (device, dataset, model, ...)."""
    lrs = [0.01, 0.05, 0.1, 0.5]
    configs = [RunConfig(lr=lrs[i % len(lrs)], seed=i // len(lrs), max_steps=steps, stop="max-steps", **config)
               for i in range(k)]
    tmp = Path(tempfile.mkdtemp(prefix="lrscope-bbench-"))
    try:
        t = time.perf_counter()
        for c in configs:
            train_run(c, tmp / "seq", progress=False)
        seq = time.perf_counter() - t
        t = time.perf_counter()
        train_batched(configs, tmp / "batched", progress=False)
        bat = time.perf_counter() - t
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"k": k, "steps": steps, "sequential_s": seq, "batched_s": bat, "speedup": seq / bat}


if __name__ == "__main__":
    r = run(int(sys.argv[1]) if len(sys.argv) > 1 else 3000)
    print(f"K={r['k']} parity FCN runs x {r['steps']} steps: sequential {r['sequential_s']:.1f} s, "
          f"batched {r['batched_s']:.1f} s, speedup {r['speedup']:.2f}x (target 3x)")
