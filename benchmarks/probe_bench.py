"""Probe cost: the wall time of probing a run (every probe, read, computed and written: what
`lrprobe compute` spends on it) as a fraction of training it, with each probe's own compute
seconds. Imports that a process pays once (Captum, when a network needs it) are timed apart and
not charged to the runs.

Two cases:
- `run_cnn`: ONE run of the replication's Colored MNIST CNN spec
  (examples/replication/colored_mnist-cnn.toml: Fashion-MNIST base, 5000/2000 samples, the
  VGG-like CNN at width 0.125, up to 3000 steps), one LR and seed 0, trained and probed in this
  process with one torch thread for both (the 2-core machine is shared: with 2 threads both
  training and probing slow down several-fold when another process takes a core);
- `run`: the embedded demo's parity + FCN 3x200 runs, one per learning rate.

    python benchmarks/probe_bench.py [--cnn-lr 0.1] [--cnn-max-steps N] [--lrs 0.05,0.1,0.5]
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

ROOT = Path(__file__).parents[1]
DEMO_LRS = tuple(tomllib.loads((ROOT / "examples" / "demo.toml").read_text())["grid"]["lr"])
CNN_SPEC = ROOT / "examples" / "replication" / "colored_mnist-cnn.toml"
NETWORK_PROBES = ("pruning", "feature_quality", "attributions")  # issue #20's: ≤ 0.25x of training together


def run_cnn(lr: float = 0.1, seed: int = 0, max_steps: int | None = None, threads: int = 1) -> dict:
    """Train one run of the Colored MNIST CNN replication spec and probe it (every probe)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        base = dict(tomllib.loads(CNN_SPEC.read_text())["base"])
        if max_steps is not None:
            base["max_steps"] = max_steps
        cfg = RunConfig(**base, lr=lr, seed=seed)
        with tempfile.TemporaryDirectory() as d:
            r = train_run(cfg, d, progress=False)
            ds = lrscope.open_run(r.path, probes=False)
            train_s = ds.attrs["timings"]["wall_seconds"]
            t0 = time.perf_counter()
            compute_run(r.path)
            wall = time.perf_counter() - t0
            ps = probe_seconds(r.path)
            res = lrscope.store.read_probe(r.path, "pruning")
            pruning_samples = int(res.pruning_samples)
    finally:
        torch.set_num_threads(before)
    return {"lr": lr, "seed": seed, "iterations": r.iterations, "snapshots": int(ds.sizes["snapshot"]),
            "train_seconds": train_s, "probe_seconds": wall, "probes": {k: ps.get(k, 0.0) for k in PROBES},
            "network_probes_seconds": sum(ps.get(k, 0.0) for k in NETWORK_PROBES), "threads": threads,
            "pruning_samples": pruning_samples, "max_steps": cfg.max_steps}


def run(lrs=DEMO_LRS) -> dict:
    t0 = time.perf_counter()
    import captum.attr  # noqa: F401  (the attributions probe's import for networks that need Captum)
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


def cnn_lines(c: dict) -> list[str]:
    """The RESULTS.md section of a `run_cnn` result."""
    t = c["train_seconds"]
    lines = [f"One run of examples/replication/colored_mnist-cnn.toml (Colored MNIST on Fashion-MNIST, 5000 training "
             f"/ 2000 test samples, VGG-like CNN x0.125), LR {c['lr']:g}, seed {c['seed']}: {c['iterations']} steps "
             f"(max_steps {c['max_steps']}), {c['snapshots']} snapshots, training {t:.1f} s; probing "
             f"(`compute_run`, every probe read, computed and written) {c['probe_seconds']:.1f} s "
             f"(**{c['probe_seconds'] / t:.3f}× training**). Pruning curves, linear probes and attributions "
             f"together: {c['network_probes_seconds']:.2f} s (**{c['network_probes_seconds'] / t:.3f}× training**; "
             f"target ≤ 0.25×). Torch on {c['threads']} thread for training and probing alike; pruning "
             f"evaluated on the whole test split ({c['pruning_samples']} samples).", "",
             "| probe | seconds | × training |", "|---|---|---|"]
    lines += [f"| {k} | {v:.2f} | {v / t:.4f} |" for k, v in c["probes"].items()]
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cnn-lr", type=float, default=0.1)
    ap.add_argument("--cnn-max-steps", type=int, default=None, help="cap the CNN run (default: the spec's 3000)")
    ap.add_argument("--lrs", default=",".join(map(str, DEMO_LRS)), help="parity demo LRs ('' to skip)")
    args = ap.parse_args()
    print("\n".join(cnn_lines(run_cnn(args.cnn_lr, max_steps=args.cnn_max_steps))), flush=True)
    if not args.lrs:
        return
    r = run([float(v) for v in args.lrs.split(",")])
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
