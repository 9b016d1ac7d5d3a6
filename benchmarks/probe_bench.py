"""Probe cost: the wall time of probing a run (every probe, read, computed and written: what
`lrprobe compute` spends on it) as a fraction of training it, over the embedded demo's learning
rates (examples/demo.toml, parity + FCN 3x200 to 100% training accuracy, one seed), probed in
one process (as `lrprobe compute` probes a sweep), with each probe's own compute seconds. Imports
that a process pays once (Captum) are timed apart and not charged to the runs.

    python benchmarks/probe_bench.py [--lrs 0.05,0.1,0.5]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import tomllib
from pathlib import Path

import lrscope
from lrscope.probe.runner import PROBES, compute_run
from lrscope.store.probes import probe_seconds
from lrscope.train.config import RunConfig
from lrscope.train.loop import train_run

DEMO_LRS = tuple(tomllib.loads((Path(__file__).parents[1] / "examples" / "demo.toml").read_text())["grid"]["lr"])


def run(lrs=DEMO_LRS) -> dict:
    t0 = time.perf_counter()
    import captum.attr  # noqa: F401  (the attributions probe's import, once per process)
    import_s = time.perf_counter() - t0
    runs, probes, train_s = [], {}, 0.0
    with tempfile.TemporaryDirectory() as d:
        for lr in lrs:
            r = train_run(RunConfig(lr=lr), d, progress=False)  # parity + FCN 3x200 to 100% train accuracy
            ds = lrscope.open_run(r.path, probes=False)
            secs = ds.attrs["timings"]["wall_seconds"]
            t1 = time.perf_counter()
            compute_run(r.path)
            wall = time.perf_counter() - t1
            ps = probe_seconds(r.path)
            runs.append({"lr": lr, "iterations": r.iterations, "snapshots": int(ds.sizes["snapshot"]),
                         "train_seconds": secs, "probe_seconds": wall, "compute_seconds": sum(ps.values())})
            train_s += secs
            for k in PROBES:
                probes[k] = probes.get(k, 0.0) + ps.get(k, 0.0)
    return {"runs": runs, "train_seconds": train_s, "probes": probes, "import_seconds": import_s}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lrs", default=",".join(map(str, DEMO_LRS)))
    r = run([float(v) for v in ap.parse_args().lrs.split(",")])
    for x in r["runs"]:
        print(f"parity FCN lr={x['lr']}: {x['iterations']} steps, {x['snapshots']} snapshots, training "
              f"{x['train_seconds']:.1f}s, probes {x['probe_seconds']:.1f}s "
              f"({x['probe_seconds'] / x['train_seconds']:.2f}x)")
    total = sum(x["probe_seconds"] for x in r["runs"])
    print(f"all runs: training {r['train_seconds']:.1f}s, probing {total:.1f}s ({total / r['train_seconds']:.2f}x); "
          f"one-time imports {r['import_seconds']:.1f}s")
    print("each probe's compute (reading and writing not included; writes overlap the next probe):")
    for k, v in r["probes"].items():
        print(f"  {k:16s} {v:6.2f}s  ({v / r['train_seconds']:.3f}x training)")


if __name__ == "__main__":
    main()
