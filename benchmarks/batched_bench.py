"""Batched sweep vs the same runs one after another, in one process (target: >= 2.5x).

K FCN 3x200 runs on parity (8 = 4 LRs x 2 seeds), each for `steps` steps with lrtrain's default
recording, (a) sequentially through `train_run`, (b) as one stack through `train_batched`; wall
and process-CPU time, on the same number of torch threads (default 1), best of `repeats`
interleaved. Torch's one-off lazy imports (the first optimizer built in a process imports
torch._dynamo, ~1.5 s) are paid before either is timed. Beside it, the steps alone: K bare
sequential steps against one stacked step (`StackedStep`: forward, loss, norms and SGD update, no
recording), the most
stacking can give on these cores (on `threads` and on 2 threads).

    python benchmarks/batched_bench.py [--steps N] [--repeats R] [--threads T]
"""

from __future__ import annotations

import argparse
import math
import shutil
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from lrscope.train.batched import train_batched
from lrscope.train.config import RunConfig
from lrscope.train.data import as_model_input, build_dataset
from lrscope.train.loop import train_run
from lrscope.train.optim import make_optimizer
from lrscope.train.restore import build_model
from lrscope.train.step import StackedStep


def configs_for(steps: int, k: int, **config) -> list[RunConfig]:
    """`config`: other RunConfig fields shared by the K runs (device, dataset, model, ...)."""
    lrs = [0.01, 0.05, 0.1, 0.5]
    return [RunConfig(lr=lrs[i % len(lrs)], seed=i // len(lrs), max_steps=steps, stop="max-steps", **config)
            for i in range(k)]


def steps_only(configs: list[RunConfig], chunk: int = 50, repeats: int = 5) -> dict:
    """Wall µs of K bare sequential steps vs one stacked step (same minibatches), best of `repeats`
    interleaved chunks (wall, not CPU time: on several threads OpenMP's spinning workers would
    count as work)."""
    cfg0 = configs[0]
    bundle = build_dataset(cfg0.dataset, seed=cfg0.data_seed, **cfg0.data_options)
    models = []
    for c in configs:
        torch.manual_seed(c.seed)
        models.append(build_model(c, bundle.input_shape, bundle.num_classes))
    opts = [make_optimizer(c, m.parameters()) for c, m in zip(configs, models)]
    stack = StackedStep(models, configs, torch.device("cpu"))
    X, Y, bs, k = bundle.train.x, bundle.train.y, min(cfg0.batch_size, len(bundle.train)), len(configs)
    perms = torch.stack([torch.randperm(len(Y), generator=torch.Generator().manual_seed(i)) for i in range(k)])
    nb = max(1, len(Y) // bs)  # whole minibatches in an epoch

    def sequential():
        for t in range(chunk):
            for j, (m, o) in enumerate(zip(models, opts)):
                idx = perms[j, (t % nb) * bs:(t % nb + 1) * bs]
                loss = F.cross_entropy(m(as_model_input(X[idx])), Y[idx])
                o.zero_grad(set_to_none=True)
                loss.backward()
                o.step()

    def stacked():
        for t in range(chunk):
            idx = perms[:, (t % nb) * bs:(t % nb + 1) * bs]
            stack(t, as_model_input(X[idx]), Y[idx])

    best = {"sequential": math.inf, "stacked": math.inf}
    for _ in range(repeats):
        for name, f in (("sequential", sequential), ("stacked", stacked)):
            c = time.perf_counter()
            f()
            best[name] = min(best[name], (time.perf_counter() - c) / chunk * 1e6)
    return {"k_bare_steps_us": best["sequential"], "stacked_step_us": best["stacked"],
            "steps_speedup": best["sequential"] / best["stacked"]}


def run(steps: int = 3000, k: int = 8, repeats: int = 1, threads: int = 1, **config) -> dict:
    """`config`: other RunConfig fields shared by the K runs (the GPU check passes its device); the
    steps-alone bound is measured on the CPU only."""
    configs = configs_for(steps, k, **config)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    tmp = Path(tempfile.mkdtemp(prefix="lrscope-bbench-"))
    res = {"seq": [], "seq_cpu": [], "bat": [], "bat_cpu": []}
    try:
        torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)  # torch's lazy imports, paid here
        for r in range(repeats):  # interleaved, best of `repeats`
            w, c = time.perf_counter(), time.process_time()
            for cfg in configs:
                train_run(cfg, tmp / f"seq{r}", progress=False)
            res["seq"].append(time.perf_counter() - w)
            res["seq_cpu"].append(time.process_time() - c)
            w, c = time.perf_counter(), time.process_time()
            train_batched(configs, tmp / f"batched{r}", progress=False)
            res["bat"].append(time.perf_counter() - w)
            res["bat_cpu"].append(time.process_time() - c)
            shutil.rmtree(tmp / f"seq{r}", ignore_errors=True)
            shutil.rmtree(tmp / f"batched{r}", ignore_errors=True)
        only = {}
        if torch.device(configs[0].device if configs[0].device != "auto" else "cpu").type == "cpu":
            only = steps_only(configs)
            torch.set_num_threads(2)
            only.update({f"{k}_2threads": v for k, v in steps_only(configs).items()})
    finally:
        torch.set_num_threads(old)
        shutil.rmtree(tmp, ignore_errors=True)
    best = {name: min(v) for name, v in res.items()}
    return {"k": k, "steps": steps, "threads": threads, "repeats": repeats, "sequential_s": best["seq"],
            "batched_s": best["bat"], "speedup": best["seq"] / best["bat"],
            "cpu_speedup": best["seq_cpu"] / best["bat_cpu"], **only}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="torch threads for both (default 1)")
    a = ap.parse_args()
    r = run(a.steps, repeats=a.repeats, threads=a.threads)
    print(f"K={r['k']} parity FCN runs x {r['steps']} steps, {r['threads']} thread(s): sequential "
          f"{r['sequential_s']:.1f} s, batched {r['batched_s']:.1f} s, speedup {r['speedup']:.2f}x (CPU time "
          f"{r['cpu_speedup']:.2f}x; target 2.5x) | steps alone: {r['k']} bare steps {r['k_bare_steps_us']:.0f} µs, "
          f"one stacked step {r['stacked_step_us']:.0f} µs ({r['steps_speedup']:.2f}x; on 2 threads "
          f"{r['k_bare_steps_us_2threads']:.0f} vs {r['stacked_step_us_2threads']:.0f} µs, "
          f"{r['steps_speedup_2threads']:.2f}x)")


if __name__ == "__main__":
    main()
