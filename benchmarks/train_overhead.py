"""Training overhead: lrtrain with its default recording vs a bare PyTorch loop, side by side.

The same model initialisation, data tensors and minibatch sequence are trained by
  (a) a bare loop that records nothing (airbench-style: tensors batched by index),
  (b) lrtrain's loop with its default recording (per-iteration log, snapshots, checkpoints),
  (c) a typical DataLoader loop with a per-sample __getitem__, as researchers often write it.
Prints steps/s and the throughput ratios (b)/(a) and (c)/(a), from wall time and from the process's
CPU time (on a loaded machine the CPU-time ratio is the steadier one). Target: (b)/(a) >= 0.95.
Every loop runs on the same number of torch threads (`--threads`, default 1: fairest when other
processes share the cores). `--breakdown` adds where lrtrain's extra time goes, per step.

    python benchmarks/train_overhead.py [--steps N] [--repeats R] [--threads T] [--breakdown]
                                        [--case parity_fcn|moon_star_cnn|colored_fashion_cnn]
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time

import torch
import torch.nn.functional as F

from lrscope.train.config import RunConfig
from lrscope.train.data import as_model_input, build_dataset
from lrscope.train.loop import train_run
from lrscope.train.recipes import DEBIAN_FASHION
from lrscope.train.restore import build_model

CASES = {
    # name: (config kwargs, steps)
    "parity_fcn": (dict(dataset="parity", model="fcn", lr=0.1), 3000),
    "moon_star_cnn": (dict(dataset="moon_star", model="cnn", lr=0.05, model_options={"width": 0.25},
                           data_options={"n_train": 5000, "n_test": 1000}), 150),
    # the CNN case: Colored MNIST on the Fashion-MNIST base (Debian's files; digits otherwise)
    "colored_fashion_cnn": (dict(dataset="colored_mnist", model="cnn", lr=0.05, model_options={"width": 0.25},
                                 data_options={"base": "fashion_mnist" if DEBIAN_FASHION.exists() else "digits",
                                               "n_train": 5000, "n_test": 1000}), 600),
}


class Clock:
    """Wall and process-CPU seconds since construction (all threads: zarr's I/O thread counts)."""

    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def __call__(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


def bare_loop(cfg: RunConfig, bundle, steps: int, device: str = "cpu") -> tuple[float, float]:
    """(wall, CPU) seconds for `steps` plain SGD steps, the data held on `device` and batched by index."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, bundle.input_shape, bundle.num_classes).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    X, Y = bundle.train.x.to(device), bundle.train.y.to(device)
    n, bs = len(Y), cfg.batch_size
    spe = math.ceil(n / bs)
    clock = Clock()
    perm = None
    for t in range(steps):
        epoch, pos = divmod(t, spe)
        if pos == 0 or perm is None:
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch))
        idx = perm[pos * bs:(pos + 1) * bs].to(device)
        loss = F.cross_entropy(model(as_model_input(X[idx])), Y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    return clock()


class PerSample(torch.utils.data.Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return as_model_input(self.x[i]), self.y[i]


def dataloader_loop(cfg: RunConfig, bundle, steps: int) -> tuple[float, float]:
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, bundle.input_shape, bundle.num_classes)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    loader = torch.utils.data.DataLoader(PerSample(bundle.train.x, bundle.train.y), batch_size=cfg.batch_size,
                                         shuffle=True)
    clock = Clock()
    t = 0
    while t < steps:
        for xb, yb in loader:
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            t += 1
            if t >= steps:
                break
    return clock()


def lrtrain_loop(cfg: RunConfig, bundle, steps: int) -> tuple[tuple[float, float], dict]:
    with tempfile.TemporaryDirectory() as d:
        clock = Clock()
        r = train_run(cfg, d, progress=False, data=bundle)
        took = clock()
        import lrscope

        timings = lrscope.open_run(r.path, probes=False).attrs["timings"]
    return took, timings


def chunk_steppers(tr, model, opt, cfg, chunk: int):
    """(bare, lrtrain_step): `chunk` steps of the bare loop, and of lrtrain's `Trainer.step` with
    its per-step keeping dropped at each recording point (no store writes), over the first
    epoch's order of the Trainer `tr` (its model `model`, optimizer `opt`)."""
    import torch.nn.functional as F

    from lrscope.train.data import as_model_input
    from lrscope.train.recorder import is_recording_point

    X, Y, bs, spe = tr.X, tr.Y, tr.bs, tr.steps_per_epoch
    perm = tr.epoch_perm(0)

    def bare():
        for t in range(chunk):
            idx = perm[(t % spe) * bs:(t % spe + 1) * bs]
            loss = F.cross_entropy(model(as_model_input(X[idx])), Y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    def lrtrain_step():
        r0 = 0
        for t in range(chunk):
            idx = perm[(t % spe) * bs:(t % spe + 1) * bs]
            tr.step(t, X[idx], Y[idx])
            if is_recording_point(t + 1, cfg, spe, t + 1 - r0, None):
                tr.drop()
                r0 = t + 1
        tr.drop()

    return bare, lrtrain_step


def breakdown(case: str, steps: int, repeats: int = 5, threads: int = 1, chunk: int = 300) -> dict:
    """Where lrtrain's extra time goes, in wall µs per step (best of `repeats`, interleaved):
    the bare loop's step; lrtrain's `Trainer.step` plus its per-step recording-point check, run
    without a store (the logits and norm references it keeps are dropped every epoch, as the
    recorder does); the fused norms alone; and, from the faster of two full `train_run`s of
    `steps` steps, the recording (the Recorder's own clock: log statistics, snapshots,
    checkpoints, Zarr writes) and the setup (store creation, model, data to the device) spread
    over its steps. For a model of Linear layers only, also the step's arithmetic rate (6 FLOPs per
    weight per sample: forward, input and weight gradients) beside a large float32 matmul's on
    the same threads: how close the bare step already is to what the cores can do."""
    from lrscope.train.data import probe_subset
    from lrscope.train.loop import Trainer
    from lrscope.train.optim import make_optimizer

    kw, _ = CASES[case]
    cfg = RunConfig(**kw, max_steps=steps, stop="max-steps").validate()
    bundle = build_dataset(cfg.dataset, seed=cfg.data_seed, **cfg.data_options)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(cfg.seed)
        model = build_model(cfg, bundle.input_shape, bundle.num_classes)
        opt = make_optimizer(cfg, model.parameters())
        tr = Trainer(cfg, bundle, model, opt, None, torch.device("cpu"),
                     probe_subset(bundle, cfg.probe_size, cfg.data_seed))
        bs = tr.bs
        params = tr.params
        bare, lrtrain_step = chunk_steppers(tr, model, opt, cfg, chunk)

        def norms():
            for _ in range(chunk):
                with torch.no_grad():
                    torch._foreach_norm([p.grad for p in params if p.grad is not None] + params)

        a = torch.randn(1024, 1024)

        def matmul():
            for _ in range(max(1, chunk // 30)):
                a @ a

        parts = {"bare_step": bare, "lrtrain_step": lrtrain_step, "fused_norms": norms, "matmul": matmul}
        best = {k: math.inf for k in parts}
        for _ in range(repeats):
            for k, f in parts.items():
                c = time.perf_counter()
                f()
                best[k] = min(best[k], (time.perf_counter() - c) / chunk * 1e6)
        runs = [lrtrain_loop(cfg, bundle, steps) for _ in range(2)]
    finally:
        torch.set_num_threads(old)
    out = {f"{k}_us": v for k, v in best.items() if k != "matmul"}
    out.update(case=case, steps=steps, threads=threads)
    out["step_extra_us"] = out["lrtrain_step_us"] - out["bare_step_us"]
    (wall, _), tim = min(runs, key=lambda r: r[0][0])
    out["record_us"] = tim["record_seconds"] / steps * 1e6
    out["setup_us"] = (wall - tim["wall_seconds"]) / steps * 1e6
    out["peak_gflops"] = 2 * 1024**3 * max(1, chunk // 30) / (best["matmul"] * chunk) * 1e-3
    linear = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    if all(isinstance(m, (torch.nn.Linear, torch.nn.ReLU, torch.nn.Sequential, torch.nn.Flatten)) or m is model
           for m in model.modules()):
        flops = 6 * bs * sum(m.in_features * m.out_features for m in linear)
        out["step_gflops"] = flops / out["bare_step_us"] * 1e-3
    return out


def run(case: str, steps: int | None = None, repeats: int = 3, threads: int = 1) -> dict:
    kw, default_steps = CASES[case]
    steps = steps or default_steps
    cfg = RunConfig(**kw, max_steps=steps, stop="max-steps").validate()
    bundle = build_dataset(cfg.dataset, seed=cfg.data_seed, **cfg.data_options)
    res = {k: [] for k in ("a", "b", "c", "a_cpu", "b_cpu", "c_cpu", "record")}
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for _ in range(repeats):  # interleaved, best of `repeats`: the machine's noise hits all three
            wall, cpu = bare_loop(cfg, bundle, steps)
            res["a"].append(wall)
            res["a_cpu"].append(cpu)
            (wall, cpu), tim = lrtrain_loop(cfg, bundle, steps)
            res["b"].append(wall)
            res["b_cpu"].append(cpu)
            res["record"].append(tim["record_seconds"])
            short = min(steps, 300)
            wall, cpu = dataloader_loop(cfg, bundle, short)
            res["c"].append(wall * steps / short)
            res["c_cpu"].append(cpu * steps / short)
    finally:
        torch.set_num_threads(old)
    best = {k: min(v) for k, v in res.items()}
    out = {"case": case, "steps": steps, "threads": threads, "bare_steps_per_s": steps / best["a"],
           "lrtrain_steps_per_s": steps / best["b"], "dataloader_steps_per_s": steps / best["c"],
           "ratio_lrtrain": best["a"] / best["b"], "ratio_dataloader": best["a"] / best["c"],
           "ratio_lrtrain_cpu": best["a_cpu"] / best["b_cpu"], "ratio_dataloader_cpu": best["a_cpu"] / best["c_cpu"],
           "record_seconds": best["record"]}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", choices=list(CASES), action="append")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads for every loop (default 1)")
    ap.add_argument("--breakdown", action="store_true", help="also the per-step CPU cost breakdown")
    a = ap.parse_args()
    for case in a.case or list(CASES):
        r = run(case, a.steps, a.repeats, a.threads)
        print(f"{case}: {r['steps']} steps, {a.threads} thread(s) | bare {r['bare_steps_per_s']:.0f} steps/s | "
              f"lrtrain {r['lrtrain_steps_per_s']:.0f} steps/s (ratio {r['ratio_lrtrain']:.3f}, CPU-time ratio "
              f"{r['ratio_lrtrain_cpu']:.3f}, recording {r['record_seconds']:.2f}s) | DataLoader per-sample "
              f"{r['dataloader_steps_per_s']:.0f} steps/s (ratio {r['ratio_dataloader']:.3f})")
        if a.breakdown:
            print(format_breakdown(breakdown(case, r["steps"], threads=a.threads)))


def format_breakdown(b: dict) -> str:
    total = b["lrtrain_step_us"] + b["record_us"] + b["setup_us"]
    rate = (f"; the bare step computes at {b['step_gflops']:.0f} GFLOP/s, a 1024² matmul at "
            f"{b['peak_gflops']:.0f}" if "step_gflops" in b else "")
    return (f"{b['case']}, {b['steps']} steps, {b['threads']} thread(s), µs/step: bare step "
            f"{b['bare_step_us']:.0f}; lrtrain step {b['lrtrain_step_us']:.0f} ({b['step_extra_us']:+.0f}; the fused "
            f"norms alone {b['fused_norms_us']:.0f}); recording {b['record_us']:.0f}; setup {b['setup_us']:.0f}; "
            f"so a ratio of {b['bare_step_us'] / total:.3f}{rate}")


if __name__ == "__main__":
    main()
