"""Training overhead: lrtrain with its default recording vs a bare PyTorch loop, side by side.

The same model initialisation, data tensors and minibatch sequence are trained by
  (a) a bare loop that records nothing (airbench-style: tensors batched by index),
  (b) lrtrain's loop with its default recording (per-iteration log, snapshots, checkpoints),
  (c) a typical DataLoader loop with a per-sample __getitem__, as researchers often write it.
Prints steps/s and the throughput ratios (b)/(a) and (c)/(a). Target: (b)/(a) >= 0.95.

    python benchmarks/train_overhead.py [--steps N] [--repeats R] [--case parity_fcn|moon_star_cnn|colored_fashion_cnn]
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


def bare_loop(cfg: RunConfig, bundle, steps: int, device: str = "cpu") -> float:
    """Seconds for `steps` plain SGD steps, the data held on `device` and batched by index."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, bundle.input_shape, bundle.num_classes).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    X, Y = bundle.train.x.to(device), bundle.train.y.to(device)
    n, bs = len(Y), cfg.batch_size
    spe = math.ceil(n / bs)
    t0 = time.perf_counter()
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
    return time.perf_counter() - t0


class PerSample(torch.utils.data.Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return as_model_input(self.x[i]), self.y[i]


def dataloader_loop(cfg: RunConfig, bundle, steps: int) -> float:
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, bundle.input_shape, bundle.num_classes)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    loader = torch.utils.data.DataLoader(PerSample(bundle.train.x, bundle.train.y), batch_size=cfg.batch_size,
                                         shuffle=True)
    t0 = time.perf_counter()
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
    return time.perf_counter() - t0


def lrtrain_loop(cfg: RunConfig, bundle, steps: int) -> tuple[float, dict]:
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        r = train_run(cfg, d, progress=False, data=bundle)
        wall = time.perf_counter() - t0
        import lrscope

        timings = lrscope.open_run(r.path, probes=False).attrs["timings"]
    return wall, timings


def run(case: str, steps: int | None = None, repeats: int = 3) -> dict:
    kw, default_steps = CASES[case]
    steps = steps or default_steps
    cfg = RunConfig(**kw, max_steps=steps, stop="max-steps").validate()
    bundle = build_dataset(cfg.dataset, seed=cfg.data_seed, **cfg.data_options)
    res = {"a": [], "b": [], "c": [], "record": []}
    for _ in range(repeats):  # interleaved, best of `repeats`: the machine's noise hits all three
        res["a"].append(bare_loop(cfg, bundle, steps))
        wall, tim = lrtrain_loop(cfg, bundle, steps)
        res["b"].append(wall)
        res["record"].append(tim["record_seconds"])
        res["c"].append(dataloader_loop(cfg, bundle, min(steps, 300)) * steps / min(steps, 300))
    best = {k: min(v) for k, v in res.items()}
    out = {"case": case, "steps": steps, "bare_steps_per_s": steps / best["a"],
           "lrtrain_steps_per_s": steps / best["b"], "dataloader_steps_per_s": steps / best["c"],
           "ratio_lrtrain": best["a"] / best["b"], "ratio_dataloader": best["a"] / best["c"],
           "record_seconds": best["record"]}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", choices=list(CASES), action="append")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    for case in a.case or list(CASES):
        r = run(case, a.steps, a.repeats)
        print(f"{case}: {r['steps']} steps | bare {r['bare_steps_per_s']:.0f} steps/s | lrtrain "
              f"{r['lrtrain_steps_per_s']:.0f} steps/s (ratio {r['ratio_lrtrain']:.3f}, recording "
              f"{r['record_seconds']:.2f}s) | DataLoader per-sample {r['dataloader_steps_per_s']:.0f} steps/s "
              f"(ratio {r['ratio_dataloader']:.3f})")


if __name__ == "__main__":
    main()
