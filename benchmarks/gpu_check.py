"""The GPU check: one command, a few minutes on one CUDA GPU, one table (printed and written to
benchmarks/GPU.md).

Rows:
  model      every model of the registry trains N steps with lrtrain on CUDA, fp32 and bf16
             (`precision`), channels-last (`channels_last`) on image models: steps/s of training
             (the store's train_seconds: recording excluded) and peak GPU memory;
  overhead   lrtrain (its default recording) vs a bare PyTorch loop (benchmarks/train_overhead.py's)
             on the CNN, per device;
  batched    a batched sweep of K small runs (parity FCN 3x200) vs the same runs one after another;
  probe      `lrprobe compute` of one run on the GPU vs on the CPU (subprocesses; CPU: no visible
             CUDA device);
  placement  the same deterministic CNN run with its data on the device, in host memory and
             memory-mapped: steps/s, and whether each store equals the device one bit for bit.

A row that fails shows the error's one line and the table goes on. Without a CUDA device the
CUDA rows say why they are skipped and the CPU rows run (use a small --steps there).

    python benchmarks/gpu_check.py [--steps 200] [--k 16] [--models fcn,cnn,...] [--out benchmarks/GPU.md]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402

from lrscope.train.config import RunConfig  # noqa: E402
from lrscope.train.data import build_dataset  # noqa: E402
from lrscope.train.loop import train_run  # noqa: E402
from lrscope.train.models import MODELS  # noqa: E402

HERE = Path(__file__).parent
DEFAULT_OUT = HERE / "GPU.md"
IMAGES = dict(dataset="colored_mnist", data_options={"base": "digits", "n_train": 2000, "n_test": 500})
VECTORS = dict(dataset="parity", data_options={"n_train": 2000, "n_test": 500})
COLUMNS = ("check", "device", "setting", "result", "peak GPU MiB", "status")


def cuda_reason() -> str | None:
    """Why the CUDA rows cannot run here (None: they can)."""
    if not torch.cuda.is_available():
        return "skipped: no CUDA device (torch.cuda.is_available() is False)"
    return None


def one_line(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}".strip().splitlines()[0]
    return text if len(text) <= 160 else text[:157] + "..."


class Table:
    def __init__(self):
        self.rows: list[dict] = []

    def row(self, check: str, device: str, setting: str, fn, peak: bool = True) -> dict:
        """Run `fn() -> result text` on `device` and add its row: the result and the peak GPU memory
        (`peak`: measured in this process), or the error's one line; a CUDA row without CUDA is
        skipped with the reason."""
        r = {"check": check, "device": device, "setting": setting, "result": "", "peak GPU MiB": "", "status": "ok"}
        skip = cuda_reason() if device == "cuda" else None
        if skip:
            r["status"] = skip
        else:
            if device == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            try:
                r["result"] = fn()
                if device == "cuda":
                    r["peak GPU MiB"] = (f"{torch.cuda.max_memory_allocated() / 2**20:.0f}" if peak
                                         else "n/a (another process)")
            except Exception as e:  # the table goes on: this row says what went wrong
                r["status"] = "error: " + one_line(e)
                if os.environ.get("LRSCOPE_GPU_CHECK_TRACEBACK"):
                    traceback.print_exc()
        self.rows.append(r)
        print(" | ".join(str(r[c]) for c in COLUMNS), file=sys.stderr, flush=True)
        return r

    def markdown(self, header: str) -> str:
        lines = [header, "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        for r in self.rows:
            lines.append("| " + " | ".join(str(r[c]).replace("|", "/") for c in COLUMNS) + " |")
        return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- the rows
def lrtrain_steps(cfg: RunConfig, out: Path) -> tuple[float, float, Path]:
    """(training steps/s from the store's train_seconds, end-to-end steps/s, the store)."""
    import lrscope

    t0 = time.perf_counter()
    r = train_run(cfg, out, progress=False)
    wall = time.perf_counter() - t0
    if r.status != "completed":
        raise RuntimeError(r.message)
    tim = lrscope.open_run(r.path, probes=False).attrs["timings"]
    return r.iterations / max(tim["train_seconds"], 1e-9), r.iterations / wall, r.path


def model_config(name: str, steps: int, device: str, precision: str) -> RunConfig:
    image = MODELS[name].image
    kw = dict(IMAGES if image else VECTORS)
    if name == "cnn":
        kw["model_options"] = {"width": 0.5}
    return RunConfig(model=name, lr=0.01, max_steps=steps, stop="max-steps", batch_size=128, device=device,
                     precision=precision, channels_last=image, snapshot_every=max(steps, 1),
                     checkpoint_every=max(steps, 1), probe_size=200, train_logits="final", **kw)


def model_rows(t: Table, models: list[str], steps: int, tmp: Path, device: str = "cuda") -> None:
    for name in models:
        for precision in ("fp32", "bf16"):
            layout = "channels-last" if MODELS.get(name) is not None and MODELS[name].image else \
                "channels-last n/a (vector inputs)"

            def fn(name=name, precision=precision):
                if name not in MODELS:
                    raise KeyError(f"model {name!r} is not in the registry")
                cfg = model_config(name, steps, device, precision).validate()
                sps, e2e, _ = lrtrain_steps(cfg, tmp / f"model-{name}-{precision}")
                return f"{sps:.1f} train steps/s ({e2e:.1f} end to end)"

            t.row("model", device, f"{name} {precision} {layout}, batch 128, {steps} steps", fn)


def overhead_rows(t: Table, steps: int, tmp: Path) -> None:
    from train_overhead import bare_loop

    for device in ("cuda", "cpu"):
        n = steps if device == "cuda" else max(2, steps // 10)

        def fn(device=device, n=n):
            cfg = RunConfig(model="cnn", lr=0.05, model_options={"width": 0.25}, max_steps=n, stop="max-steps",
                            device=device, **IMAGES).validate()
            bundle = build_dataset(cfg.dataset, seed=cfg.data_seed, **cfg.data_options)
            bare = n / bare_loop(cfg, bundle, n, device=device)[0]
            t0 = time.perf_counter()
            r = train_run(cfg, tmp / f"overhead-{device}", progress=False, data=bundle)
            if device == "cuda":
                torch.cuda.synchronize()
            lr = r.iterations / (time.perf_counter() - t0)
            return f"lrtrain {lr:.1f} steps/s vs bare {bare:.1f} steps/s: ratio {lr / bare:.2f}"

        t.row("overhead", device, f"cnn x0.25 on colored_mnist (digits), {n} steps", fn)


def batched_rows(t: Table, steps: int, k: int) -> None:
    import batched_bench

    for device in ("cuda", "cpu"):
        n = steps if device == "cuda" else max(2, steps // 10)

        def fn(device=device, n=n):
            r = batched_bench.run(n, k=k, device=device, data_options={"n_train": 2000, "n_test": 500})
            return (f"sequential {r['sequential_s']:.1f} s, batched {r['batched_s']:.1f} s: "
                    f"speedup {r['speedup']:.2f}x")

        t.row("batched", device, f"K={k} parity FCN 3x200 runs, {n} steps each", fn)


def probe_rows(t: Table, steps: int, tmp: Path) -> None:
    """One run trained on the CPU, probed by `lrprobe compute` in a subprocess per device."""
    state: dict = {}

    def source() -> Path:
        if "path" not in state:
            cfg = RunConfig(lr=0.1, max_steps=max(steps, 20), stop="max-steps", device="cpu",
                            snapshot_every=max(steps // 4, 5), checkpoint_every=max(steps // 2, 10), **VECTORS)
            r = train_run(cfg.validate(), tmp / "probe-src", progress=False)
            state["path"] = r.path
        return state["path"]

    for device in ("cuda", "cpu"):
        def fn(device=device):
            src = source()
            copy = tmp / f"probe-{device}" / src.name
            shutil.copytree(src, copy)
            env = dict(os.environ)
            if device == "cpu":
                env["CUDA_VISIBLE_DEVICES"] = ""
            code = "from lrscope.cli.probe import main; main()"
            t0 = time.perf_counter()
            p = subprocess.run([sys.executable, "-c", code, "compute", str(copy), "--quiet"], env=env,
                               capture_output=True, text=True)
            secs = time.perf_counter() - t0
            if p.returncode != 0:
                lines = [ln for ln in (p.stderr or p.stdout).splitlines() if ln.strip()]
                raise RuntimeError(lines[-1] if lines else f"exit code {p.returncode}")
            return f"{secs:.1f} s (a subprocess: imports included)"

        t.row("probe", device, f"lrprobe compute, every probe, parity FCN run of {max(steps, 20)} steps", fn,
              peak=False)


def placement_rows(t: Table, steps: int, tmp: Path) -> None:
    from lrscope.store.compare import differences

    for device in ("cuda", "cpu"):
        n = steps if device == "cuda" else max(2, steps // 10)
        paths: dict = {}
        for placement in ("device", "host", "mmap"):
            def fn(device=device, n=n, placement=placement, paths=paths):
                cfg = RunConfig(model="cnn", lr=0.05, model_options={"width": 0.25}, max_steps=n, stop="max-steps",
                                device=device, deterministic=True, data_placement=placement,
                                snapshot_every=max(n // 2, 1), checkpoint_every=max(n // 2, 1), **IMAGES).validate()
                sps, e2e, path = lrtrain_steps(cfg, tmp / f"placement-{device}-{placement}")
                paths[placement] = path
                same = ""
                if placement != "device":
                    if "device" not in paths:
                        same = "; no device store to compare with"
                    else:
                        diff = differences(paths["device"], path)
                        same = ("; store bitwise equal to the device run's" if not diff else
                                f"; store DIFFERS from the device run's: {', '.join(diff[:3])}")
                return f"{sps:.1f} train steps/s ({e2e:.1f} end to end){same}"

            t.row("placement", device, f"cnn x0.25, data placement {placement}, deterministic, {n} steps", fn)


# ----------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=200,
                    help="steps per CUDA row and model row (the other CPU rows: a tenth, at least 2)")
    ap.add_argument("--k", type=int, default=16, help="runs in the batched sweep")
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated models (default: the registry)")
    ap.add_argument("--model-device", default="cuda", choices=("cuda", "cpu"),
                    help="where the model rows train (cpu: to try them on a machine without a GPU)")
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="where the table is written (markdown)")
    ap.add_argument("--only", default="model,overhead,batched,probe,placement",
                    help="comma-separated checks to run")
    a = ap.parse_args(argv)
    if a.steps < 1 or a.k < 1:
        ap.error("--steps and --k must be >= 1")
    only = set(a.only.split(","))
    t = Table()
    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="lrscope-gpucheck-"))
    try:
        if "model" in only:
            model_rows(t, [m for m in a.models.split(",") if m], a.steps, tmp, a.model_device)
        if "overhead" in only:
            overhead_rows(t, a.steps, tmp)
        if "batched" in only:
            batched_rows(t, a.steps, a.k)
        if "probe" in only:
            probe_rows(t, a.steps, tmp)
        if "placement" in only:
            placement_rows(t, a.steps, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    header = (f"# GPU check\n\n`python benchmarks/gpu_check.py --steps {a.steps} --k {a.k}` on "
              f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: torch {torch.__version__}, CUDA device: "
              f"{gpu}, {os.cpu_count()} CPU cores; {time.perf_counter() - t0:.0f} s in all.")
    if gpu == "none":
        header += " No CUDA device here: the CUDA rows are skipped; run it on a GPU machine to fill them."
    text = t.markdown(header)
    print(text)
    Path(a.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
