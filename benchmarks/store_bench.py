"""Store benchmarks: bytes on disk vs raw, write cost, open_sweep over 100 runs, and the two
read patterns (one sample across all snapshots; one snapshot across all samples).

    python benchmarks/store_bench.py [--runs 100]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

import lrscope
from lrscope.train.config import RunConfig
from lrscope.train.loop import train_run


def dir_bytes(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def raw_bytes(p: Path) -> int:
    g = zarr.open_group(str(p), mode="r")
    total = 0

    def walk(grp):
        nonlocal total
        for _, a in grp.arrays():
            total += int(np.prod(a.shape)) * a.dtype.itemsize
        for _, sub in grp.groups():
            walk(sub)

    walk(g)
    return total


def run(n_runs: int = 100) -> dict:
    out = {}
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        cfg = RunConfig(lr=0.1, max_steps=3000, stop="max-steps")
        t0 = time.perf_counter()
        r = train_run(cfg, d / "one", progress=False)
        out["train_seconds"] = time.perf_counter() - t0
        ds = lrscope.open_run(r.path, probes=False)
        out["record_seconds"] = ds.attrs["timings"]["record_seconds"]
        out["disk_mb"] = dir_bytes(r.path) / 2**20
        out["raw_mb"] = raw_bytes(r.path) / 2**20
        # 100 stores of a sweep: copies with their config's lr/seed rewritten
        sweep = d / "sweep"
        sweep.mkdir()
        for i in range(n_runs):
            dst = sweep / f"run{i:03d}.zarr"
            shutil.copytree(r.path, dst)
            meta = json.loads((dst / "zarr.json").read_text())
            meta["attributes"]["config"]["lr"] = float(10 ** (-2 + 2 * (i // 5) / max(1, n_runs // 5)))
            meta["attributes"]["config"]["seed"] = i % 5
            meta["attributes"]["run_id"] = dst.stem
            (dst / "zarr.json").write_text(json.dumps(meta))
        t0 = time.perf_counter()
        sw = lrscope.open_sweep(sweep)
        out["open_sweep_seconds"] = time.perf_counter() - t0
        out["open_sweep_runs"] = int(sw.sizes["run"])
        t0 = time.perf_counter()
        one_sample = ds.test_logits.isel(test_sample=1234).values
        out["read_one_sample_all_snapshots_ms"] = (time.perf_counter() - t0) * 1e3
        t0 = time.perf_counter()
        one_snap = ds.test_logits.isel(snapshot=-1).values
        out["read_one_snapshot_all_samples_ms"] = (time.perf_counter() - t0) * 1e3
        out["snapshots"] = int(one_sample.shape[0])
        out["samples"] = int(one_snap.shape[0])
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=100)
    r = run(ap.parse_args().runs)
    print(f"store: {r['disk_mb']:.1f} MB on disk vs {r['raw_mb']:.1f} MB raw (x{r['raw_mb'] / r['disk_mb']:.1f}); "
          f"recording {r['record_seconds']:.2f}s of a {r['train_seconds']:.1f}s run")
    print(f"open_sweep over {r['open_sweep_runs']} runs: {r['open_sweep_seconds']:.2f}s (target < 2 s)")
    print(f"one sample across {r['snapshots']} snapshots: {r['read_one_sample_all_snapshots_ms']:.1f} ms; "
          f"one snapshot across {r['samples']} samples: {r['read_one_snapshot_all_samples_ms']:.1f} ms")


if __name__ == "__main__":
    main()
