"""Data placement: steps/s of one CNN run with its data on the device, in host memory and
memory-mapped (train/placement.py), interleaved, best of R; each store compared bit for bit with
the device run's.

    python benchmarks/placement_bench.py [--steps 300] [--repeats 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import lrscope
from lrscope.store.compare import differences
from lrscope.train.config import RunConfig
from lrscope.train.loop import train_run

CASE = dict(dataset="colored_mnist", model="cnn", lr=0.05, model_options={"width": 0.25},
            data_options={"base": "digits", "n_train": 5000, "n_test": 1000})


def run(steps: int = 300, repeats: int = 2, device: str = "cpu") -> dict:
    best: dict = {}
    equal = {}
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as d:
            paths = {}
            for p in ("device", "host", "mmap"):
                cfg = RunConfig(**CASE, max_steps=steps, stop="max-steps", device=device, deterministic=True,
                                data_placement=p).validate()
                t0 = time.perf_counter()
                r = train_run(cfg, f"{d}/{p}", progress=False)
                wall = time.perf_counter() - t0
                tim = lrscope.open_run(r.path, probes=False).attrs["timings"]
                paths[p] = r.path
                cur = {"train": steps / tim["train_seconds"], "end_to_end": steps / wall}
                old = best.get(p)
                best[p] = cur if old is None else {k: max(old[k], cur[k]) for k in cur}
            for p in ("host", "mmap"):
                equal[p] = not differences(paths["device"], paths[p])
    return {"steps": steps, "device": device, "steps_per_s": best, "bitwise_equal": equal}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    r = run(a.steps, a.repeats, a.device)
    for p, v in r["steps_per_s"].items():
        same = "" if p == "device" else f", store bitwise equal to device: {r['bitwise_equal'][p]}"
        print(f"cnn x0.25 colored_mnist(digits, 5000) on {r['device']}, data {p}: {v['train']:.1f} train steps/s, "
              f"{v['end_to_end']:.1f} end to end ({r['steps']} steps){same}")


if __name__ == "__main__":
    main()
