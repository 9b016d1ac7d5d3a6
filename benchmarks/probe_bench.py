"""Probe cost: seconds of each probe on one run, as a fraction of that run's training time.

    python benchmarks/probe_bench.py [--lr 0.1]
"""

from __future__ import annotations

import argparse
import tempfile

import lrscope
from lrscope.probe.runner import PROBES, compute_run, probe_seconds
from lrscope.train.config import RunConfig
from lrscope.train.loop import train_run


def run(lr: float = 0.1) -> dict:
    with tempfile.TemporaryDirectory() as d:
        r = train_run(RunConfig(lr=lr), d, progress=False)  # parity + FCN 3x200 to 100% train accuracy
        ds = lrscope.open_run(r.path, probes=False)
        train_s = ds.attrs["timings"]["wall_seconds"]
        compute_run(r.path)
        secs = probe_seconds(r.path)
        return {"lr": lr, "iterations": r.iterations, "train_seconds": train_s,
                "snapshots": int(ds.sizes["snapshot"]), "probes": {k: secs[k] for k in PROBES if k in secs}}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lr", type=float, default=0.1)
    r = run(ap.parse_args().lr)
    total = sum(r["probes"].values())
    print(f"parity FCN lr={r['lr']}: {r['iterations']} steps, {r['snapshots']} snapshots, "
          f"training {r['train_seconds']:.1f}s; all probes {total:.1f}s ({total / r['train_seconds']:.2f}x training)")
    for k, v in r["probes"].items():
        print(f"  {k:16s} {v:6.2f}s  ({v / r['train_seconds']:.3f}x training)")


if __name__ == "__main__":
    main()
