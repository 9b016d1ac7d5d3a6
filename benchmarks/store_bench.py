"""Store benchmarks: bytes on disk vs raw, write cost, open_sweep over 100 runs, the two read
patterns (one sample across all snapshots; one snapshot across all samples), and the minibatch
record: bytes per training step at 2, 10, 100 and 1000 classes under each log_logits policy, the
growth of a store with run length, and the size of a 90-epoch ImageNet-shaped run.

    python benchmarks/store_bench.py [--runs 100] [--record-only]
"""

from __future__ import annotations

import argparse
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
            g = zarr.open_group(str(dst), mode="r+")  # zarr's API: no module outside store/ opens zarr.json
            cfg = dict(g.attrs["config"], lr=float(10 ** (-2 + 2 * (i // 5) / max(1, n_runs // 5))), seed=i % 5)
            g.attrs.update({"config": cfg, "run_id": dst.stem})
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


# ------------------------------------------------------------------------------ the minibatch record
def group_bytes(p: Path) -> dict[str, int]:
    """Bytes on disk of each top-level group of a store (log, snapshots, checkpoints, data)."""
    return {g.name: dir_bytes(g) for g in p.iterdir() if g.is_dir()}


def gaussian_bundle(n_classes: int, n_train: int, n_test: int, dim: int = 32, seed: int = 0):
    """Gaussian clusters, one per class (10% bias-conflicting labels): a dataset of any number of
    classes that trains in seconds on a CPU (the store's bytes depend on the shapes and on how
    compressible the logits are, which real training gives)."""
    from lrscope.train.recipes import DataBundle, Split

    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_classes, dim)) * 1.5

    def split(n, offset):
        y = rng.permutation(np.arange(n) % n_classes)
        x = (centers[y] + rng.normal(size=(n, dim))).astype(np.float32)
        b = np.where(rng.random(n) < 0.1, (y + rng.integers(1, n_classes, n)) % n_classes, y)
        return Split.from_numpy(x, y, b, np.arange(n) + offset)

    return DataBundle("gaussian", split(n_train, 0), split(n_test, n_train), n_classes, n_classes, (dim,))


def record_run(d: Path, n_classes: int, policy: str, steps: int, batch: int = 256, n_train: int = 4096,
               **schedule) -> dict:
    """One real training run of `steps` steps on `n_classes` Gaussian clusters (FCN 32-64-C,
    batch `batch`): the bytes of its log per step, on disk and raw, and of each group. Snapshots
    and checkpoints only at the start and the end unless `schedule` (snapshot_every, ...) says."""
    from lrscope.store import schema as S

    bundle = gaussian_bundle(n_classes, n_train, 1000)
    kw = {"snapshot_every": steps, "checkpoint_every": steps, "train_logits": "final", **schedule}
    cfg = RunConfig(lr=0.05, widths=[64], batch_size=batch, max_steps=steps, stop="max-steps", probe_size=200,
                    log_logits=policy, **kw)
    t0 = time.perf_counter()
    r = train_run(cfg, d / f"c{n_classes}-{policy}-{steps}", progress=False, data=bundle)
    secs = time.perf_counter() - t0
    log = r.path / S.G_LOG
    g = zarr.open_group(str(r.path), mode="r")
    return {"classes": n_classes, "policy": g.attrs["log_logits"], "steps": steps, "seconds": secs,
            "log_bytes_per_step": dir_bytes(log) / steps, "raw_log_bytes_per_step": raw_bytes_group(g[S.G_LOG]) / steps,
            "groups": group_bytes(r.path), "store_bytes": dir_bytes(r.path)}


def raw_bytes_group(g) -> int:
    return sum(int(np.prod(a.shape)) * a.dtype.itemsize for _, a in g.arrays())


def record_bench(classes=(2, 10, 100, 1000), steps: int = 256, lengths=(1000, 2000, 4000)) -> dict:
    """Bytes per step of the minibatch log at each class count under full and summary (auto picks
    one of the two: schema.resolve_log_logits), and the growth of a whole store with run length at
    100 classes under the defaults (auto: summary; a snapshot every 1000 steps, a checkpoint every
    2000, train logits where a pass is cheap)."""
    from lrscope.store import schema as S

    out = {"per_class": [], "growth": [], "auto": {c: S.resolve_log_logits("auto", c) for c in classes}}
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        for c in classes:
            for pol in ("full", "summary"):
                out["per_class"].append(record_run(d, c, pol, steps))
                shutil.rmtree(next(d.glob(f"c{c}-{pol}-{steps}")))
        for n in lengths:
            out["growth"].append(record_run(d, 100, "auto", n, snapshot_every=1000, checkpoint_every=2000,
                                            train_logits="auto"))
    out["imagenet"] = imagenet_estimate(out)
    return out


IMAGENET = {"n_train": 1_281_167, "n_test": 50_000, "batch": 256, "epochs": 90, "classes": 1000}


def imagenet_estimate(b: dict) -> dict:
    """A 90-epoch ImageNet-shaped run (1.28M samples, batch 256: 5005 steps an epoch) under the
    default policy (auto: summary at 1000 classes): its minibatch log, from the measured bytes per
    step at 1000 classes and batch 256; and, under the full policy, what the log would be."""
    per = {r["policy"]: r["log_bytes_per_step"] for r in b["per_class"] if r["classes"] == 1000}
    raw = {r["policy"]: r["raw_log_bytes_per_step"] for r in b["per_class"] if r["classes"] == 1000}
    steps = -(-IMAGENET["n_train"] // IMAGENET["batch"]) * IMAGENET["epochs"]
    # the rest of the store under the default schedule, from the shapes (float32 logits compress
    # little: raw bytes): a full snapshot's test logits every 1000 steps, the train logits at the
    # final one (a pass over 1.28M samples costs ~1668 steps, far above 2% of 1000), a ResNet-50
    # checkpoint (25.6M float32 parameters) every 2000 steps
    c = IMAGENET["classes"]
    snaps, ckpts = steps // 1000 + 1, steps // 2000 + 1
    return {"steps": steps, "summary_log_gb": per["summary"] * steps / 1e9, "full_log_gb": per["full"] * steps / 1e9,
            "summary_raw_gb": raw["summary"] * steps / 1e9, "full_raw_gb": raw["full"] * steps / 1e9,
            "snapshots": snaps, "test_logits_gb": snaps * IMAGENET["n_test"] * c * 4 / 1e9,
            "train_logits_gb": IMAGENET["n_train"] * c * 4 / 1e9, "checkpoints": ckpts,
            "checkpoints_gb": ckpts * 25.6e6 * 4 / 1e9}


def print_record(b: dict) -> None:
    print("classes | auto | full B/step (raw) | summary B/step (raw) | full/summary")
    rows = {(r["classes"], r["policy"]): r for r in b["per_class"]}
    for c, auto in b["auto"].items():
        f, s = rows[c, "full"], rows[c, "summary"]
        print(f"{c} | {auto} | {f['log_bytes_per_step']:.0f} ({f['raw_log_bytes_per_step']:.0f}) | "
              f"{s['log_bytes_per_step']:.0f} ({s['raw_log_bytes_per_step']:.0f}) | "
              f"{f['log_bytes_per_step'] / s['log_bytes_per_step']:.1f}")
    for r in b["growth"]:
        g = r["groups"]
        print(f"growth, 100 classes, defaults: {r['steps']} steps: store {r['store_bytes'] / 2**20:.2f} MB (log "
              f"{g['log'] / 2**20:.2f}, snapshots {g['snapshots'] / 2**20:.2f}, checkpoints "
              f"{g['checkpoints'] / 2**20:.2f} MB)")
    e = b["imagenet"]
    print(f"90-epoch ImageNet-shaped run ({e['steps']} steps): log {e['summary_log_gb']:.2f} GB under the default "
          f"(summary) vs {e['full_log_gb']:.0f} GB with full logits; test logits of {e['snapshots']} snapshots "
          f"{e['test_logits_gb']:.0f} GB, final train logits {e['train_logits_gb']:.1f} GB, {e['checkpoints']} "
          f"checkpoints {e['checkpoints_gb']:.0f} GB (raw, from the shapes)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--record-only", action="store_true", help="only the minibatch-record benchmark")
    args = ap.parse_args()
    print_record(record_bench())
    if args.record_only:
        return
    r = run(args.runs)
    print(f"store: {r['disk_mb']:.1f} MB on disk vs {r['raw_mb']:.1f} MB raw (x{r['raw_mb'] / r['disk_mb']:.1f}); "
          f"recording {r['record_seconds']:.2f}s of a {r['train_seconds']:.1f}s run")
    print(f"open_sweep over {r['open_sweep_runs']} runs: {r['open_sweep_seconds']:.2f}s (target < 2 s)")
    print(f"one sample across {r['snapshots']} snapshots: {r['read_one_sample_all_snapshots_ms']:.1f} ms; "
          f"one snapshot across {r['samples']} samples: {r['read_one_snapshot_all_samples_ms']:.1f} ms")


if __name__ == "__main__":
    main()
