"""The explorer's latencies in a real browser (`lrprobe serve` + Debian's headless Chromium through
Playwright, the same driver as tests/test_app_browser.py): first paint, a metric change, a move of
the iteration slider, a sample selection; on a demo-sized sweep (12 runs) and a 100-run sweep.

The runs are copies of one trained and probed parity run (the demo's 3×200 FCN) whose config's
lr/seed are rewritten, so the sweep's size, not its training, is what is measured.

    python benchmarks/app_bench.py [--runs 12,100]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import zarr

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def make_sweep(src: Path, out: Path, n: int) -> Path:
    lrs = [0.01, 0.05, 0.1, 0.25, 0.5, 0.75]
    out.mkdir(parents=True)
    for i in range(n):
        lr, seed = lrs[i % len(lrs)], i // len(lrs)
        run_id = f"parity-fcn-lr{lr:g}-s{seed}"
        dst = out / f"{run_id}.zarr"
        shutil.copytree(src, dst)
        g = zarr.open_group(str(dst), mode="r+")
        cfg = dict(g.attrs["config"], lr=lr, seed=seed)
        g.attrs.update({"config": cfg, "run_id": run_id})
    return out


def run(sizes=(12, 100)) -> dict:
    from test_app_browser import CHROMIUM, drive

    from lrscope.probe.runner import compute_run
    from lrscope.train.config import RunConfig
    from lrscope.train.loop import train_run

    if CHROMIUM is None:
        return {"skipped": "chromium not installed"}
    out = {}
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        r = train_run(RunConfig(lr=0.1, widths=[200, 200, 200], max_steps=3000), d / "one", progress=False)
        compute_run(r.path)
        for n in sizes:
            sweep = make_sweep(r.path, d / f"sweep{n}", n)
            t0 = time.perf_counter()
            t = drive([sweep])
            t["runs"] = n
            t["total_s"] = time.perf_counter() - t0
            out[str(n)] = t
            print(json.dumps(t), flush=True)
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", default="12,100")
    a = ap.parse_args()
    print(json.dumps(run(tuple(int(x) for x in a.runs.split(","))), indent=1))
