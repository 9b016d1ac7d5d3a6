"""Recording one's own loop (`lrscope.Recorder`) vs lrtrain vs a bare loop, side by side.

The same model initialisation, data tensors and minibatch sequence are trained by
  (a) a bare loop that records nothing (train_overhead.py's),
  (b) lrtrain's loop with its default recording (train_run),
  (c) the same bare loop recording through the public API: after each optimizer step it hands
      `Recorder.step` the minibatch's ids, logits and loss; lrscope snapshots and checkpoints on
      lrtrain's schedule (the stores of (b) and (c) are bitwise equal: tests/test_api.py).
Prints steps/s and the ratios (b)/(a), (c)/(a) and (c)/(b), from wall and process-CPU time, best of
the interleaved repeats, every loop on the same number of torch threads. Target: (c) costs no more
than (b). Also the lines of user code of the examples (examples/own_loop.py,
examples/lightning_callback.py): code lines, neither blank nor comment nor docstring.

    python benchmarks/api_overhead.py [--steps N] [--repeats R] [--threads T] [--case parity_fcn|...]
"""

from __future__ import annotations

import argparse
import ast
import io
import math
import tempfile
import time
import tokenize
from pathlib import Path

import torch
import torch.nn.functional as F
from train_overhead import CASES, Clock, bare_loop, chunk_steppers, lrtrain_loop

from lrscope.train.config import RunConfig
from lrscope.train.data import as_model_input, build_dataset
from lrscope.train.restore import build_model

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
API_KEYS = ("lr", "seed", "batch_size", "max_steps", "snapshot_every", "checkpoint_every", "probe_size", "stop")


def api_loop(cfg: RunConfig, bundle, steps: int) -> tuple[float, float]:
    """(wall, CPU) seconds for `steps` of the bare loop recorded through lrscope.Recorder, store
    creation and the final snapshot and checkpoint included (as lrtrain's are)."""
    import lrscope

    torch.manual_seed(cfg.seed)
    model = build_model(cfg, bundle.input_shape, bundle.num_classes)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    X, Y = bundle.train.x, bundle.train.y
    n, bs = len(Y), cfg.batch_size
    spe = math.ceil(n / bs)
    config = {k: getattr(cfg, k) for k in API_KEYS}
    with tempfile.TemporaryDirectory() as d:
        clock = Clock()
        with lrscope.Recorder(d, model=model, features_at="head", optimizer=opt, data=bundle, config=config) as rec:
            perm = None
            for t in range(rec.resume(), steps):
                epoch, pos = divmod(t, spe)
                if pos == 0 or perm is None:
                    perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch))
                idx = perm[pos * bs:(pos + 1) * bs]
                logits = model(as_model_input(X[idx]))
                loss = F.cross_entropy(logits, Y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if rec.step(idx, logits, loss=loss):
                    break
        return clock()


def run(case: str, steps: int | None = None, repeats: int = 3, threads: int = 1) -> dict:
    kw, default_steps = CASES[case]
    steps = steps or default_steps
    cfg = RunConfig(**kw, max_steps=steps, stop="max-steps").validate()
    bundle = build_dataset(cfg.dataset, seed=cfg.data_seed, **cfg.data_options)
    res = {k: [] for k in ("a", "b", "c", "a_cpu", "b_cpu", "c_cpu")}
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for _ in range(repeats):  # interleaved, best of `repeats`: the machine's noise hits all three
            for key, fn in (("a", bare_loop), ("b", lambda *a: lrtrain_loop(*a)[0]), ("c", api_loop)):
                wall, cpu = fn(cfg, bundle, steps)
                res[key].append(wall)
                res[f"{key}_cpu"].append(cpu)
    finally:
        torch.set_num_threads(old)
    best = {k: min(v) for k, v in res.items()}
    return {"case": case, "steps": steps, "threads": threads, "bare_steps_per_s": steps / best["a"],
            "lrtrain_steps_per_s": steps / best["b"], "api_steps_per_s": steps / best["c"],
            "ratio_lrtrain": best["a"] / best["b"], "ratio_api": best["a"] / best["c"],
            "ratio_api_lrtrain": best["b"] / best["c"], "ratio_api_lrtrain_cpu": best["b_cpu"] / best["c_cpu"]}


def steps_only(case: str = "parity_fcn", chunk: int = 100, repeats: int = 9, threads: int = 1) -> dict:
    """Wall µs per step, best of `repeats` interleaved chunks of `chunk` steps, without store writes:
    the bare step; lrtrain's `Trainer.step` with its recording-point check; the bare step plus what
    `Recorder.step` does per step (checks, references, the fused norms, the recording-point check;
    the kept references dropped at each recording point, as the recorder does)."""
    import lrscope
    from lrscope.train.data import probe_subset
    from lrscope.train.loop import Trainer
    from lrscope.train.optim import make_optimizer
    from lrscope.train.recorder import is_recording_point

    kw, _ = CASES[case]
    cfg = RunConfig(**kw, max_steps=10**6, stop="max-steps").validate()
    bundle = build_dataset(cfg.dataset, seed=cfg.data_seed, **cfg.data_options)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(cfg.seed)
        model = build_model(cfg, bundle.input_shape, bundle.num_classes)
        opt = make_optimizer(cfg, model.parameters())
        tr = Trainer(cfg, bundle, model, opt, None, torch.device("cpu"), probe_subset(bundle, cfg.probe_size, 0))
        X, Y, bs, spe = tr.X, tr.Y, tr.bs, tr.steps_per_epoch
        perm = tr.epoch_perm(0)
        with tempfile.TemporaryDirectory() as d:
            rec = lrscope.Recorder(d, model=model, optimizer=opt, data=bundle,
                                   config={k: getattr(cfg, k) for k in API_KEYS})
            lt = rec.trainer
            bare, lrtrain_step = chunk_steppers(tr, model, opt, cfg, chunk)

            def api_step():
                r0 = 0
                for t in range(chunk):
                    idx = perm[(t % spe) * bs:(t % spe + 1) * bs]
                    logits = model(as_model_input(X[idx]))
                    loss = F.cross_entropy(logits, Y[idx])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    lt.add(idx, logits, None, loss)
                    if is_recording_point(t + 1, cfg, spe, t + 1 - r0, None):
                        lt.drop()
                        r0 = t + 1
                lt.drop()

            parts = {"bare_step": bare, "lrtrain_step": lrtrain_step, "api_step": api_step}
            best = {k: math.inf for k in parts}
            for _ in range(repeats):
                for k, f in parts.items():
                    c = time.perf_counter()
                    f()
                    best[k] = min(best[k], (time.perf_counter() - c) / chunk * 1e6)
            rec.close()
    finally:
        torch.set_num_threads(old)
    return {f"{k}_us": v for k, v in best.items()}


def user_lines(path: Path) -> int:
    """Lines of code in `path`: neither blank, nor a comment, nor part of a docstring."""
    src = path.read_text()
    doc = set()
    for node in ast.walk(ast.parse(src)):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and \
                isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            doc.update(range(body[0].lineno, body[0].end_lineno + 1))
    code = set()
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type not in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
                            tokenize.ENDMARKER):
            code.update(range(tok.start[0], tok.end[0] + 1))
    return len(code - doc)


def example_lines() -> dict[str, int]:
    return {p.name: user_lines(p) for p in (EXAMPLES / "own_loop.py", EXAMPLES / "lightning_callback.py")}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", choices=list(CASES), action="append")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads for every loop (default 1)")
    a = ap.parse_args()
    for case in a.case or ["parity_fcn"]:
        r = run(case, a.steps, a.repeats, a.threads)
        print(f"{case}: {r['steps']} steps, {a.threads} thread(s) | bare {r['bare_steps_per_s']:.0f} steps/s | "
              f"lrtrain {r['lrtrain_steps_per_s']:.0f} ({r['ratio_lrtrain']:.3f}) | API {r['api_steps_per_s']:.0f} "
              f"({r['ratio_api']:.3f}) | API / lrtrain {r['ratio_api_lrtrain']:.3f} (CPU time "
              f"{r['ratio_api_lrtrain_cpu']:.3f})")
    u = steps_only(threads=a.threads)
    print(f"per step (µs, no store writes): bare {u['bare_step_us']:.0f}, lrtrain {u['lrtrain_step_us']:.0f}, "
          f"API {u['api_step_us']:.0f}")
    print("user code lines:", ", ".join(f"{k} {v}" for k, v in example_lines().items()))


if __name__ == "__main__":
    main()
