"""Run every benchmark and regenerate benchmarks/RESULTS.md with the machine's description.

    python benchmarks/run_all.py                          (or: make bench)
    python benchmarks/run_all.py --only overhead,batched  (those sections only; the rest of
                                                           RESULTS.md is kept as it is)

Sections: overhead, api, store, record, probes, batched, app.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import api_overhead  # noqa: E402
import app_bench  # noqa: E402
import batched_bench  # noqa: E402
import probe_bench  # noqa: E402
import store_bench  # noqa: E402
import train_overhead  # noqa: E402

NOTES = """
## Reading these numbers

- The ≥ 0.95 target is **not met** on parity/FCN (~0.75–0.8 on a 3000-step run, ~0.8–0.85 on a
  10000-step one; low-LR runs take ~20000 steps). The breakdown above is the profile: a bare
  3×200 FCN step at batch 100 is ~0.77 ms on one thread; lrtrain's step adds ~40 µs (~5%): the
  fused gradient and parameter norms that the log's `grad_norm`/`param_norm` need (~23 µs: 16
  tensors read once more) and ~15 µs of Python (the recording-point check, the references kept
  to the logits and norms). The rest of the gap is the recording itself, ~0.1–0.15 ms per step
  spread over the run: a store's content (the per-epoch host statistics, the snapshots' forward
  passes over the probe subset and the 10000 test samples, the final train-set pass, checkpoints,
  and zstd + Zarr writes of all of it; the iteration-0 snapshot and checkpoint count here), and
  the setup before the first step (creating the store: labels, probe inputs; ~0.15–0.2 s).
  Removed this round without changing a stored byte (deterministic stores compared array for
  array): a disabled `torch.autocast` entered every step (now a null context in
  fp32), an import on every step's recording-point check, and the 16 0-d norm tensors kept per step
  (now one stacked vector: they cost ~30–60 µs a step, mostly the garbage collector). What is left
  cannot be removed on 2 cores: the bare step already runs at ~2/3 of a large matmul's FLOP rate
  on its core, so there is no per-step slack to hide work in; with other processes on both cores
  (load average 2–7 here) there is no idle core to overlap the recording with training (Zarr's
  writes already run on its own I/O thread); and the recording is the product. The ratio rises
  with run length (the setup and early log-spaced snapshots amortise) towards ~0.85: ~40 µs of
  step overhead plus ~0.1 ms a step of recording at the default `snapshot_every=1000`. The
  DataLoader loop researchers write (per-sample `__getitem__`) is timed over 300 steps and scaled
  (noisy): from well below lrtrain's throughput to about it.
- The CNN case (Colored MNIST on Fashion-MNIST, VGG-like ×0.25, 5000 samples) is 600 steps and
  one repeat, to keep `make bench` short (so its DataLoader ratio is noisy): its recording is
  mostly the fixed snapshots (10 light + 2 full with train logits) of a run far shorter than a
  real one (~6500 steps to 100% training accuracy).
- `open_sweep` sits at its 2 s target (1.9–2.8 s between runs of this benchmark on this
  machine): ~20 ms per run go to reading its attributes and indices and wrapping its 17 arrays as
  dask arrays; the concat along `run` is one stack per variable (it was xarray's concat, ~1 s of
  the old 5.2 s).
- Probes are measured on parity, the cheapest runs to train (≈ 1.5 ms steps). Probing a run is a
  near-fixed 1.2–2 s here (the pruning curves' forward passes over the 10000-sample test set,
  2 linear probes per snapshot, Integrated Gradients and DeepLift at 2 checkpoints, and writing
  ~75 small arrays), so its share falls with the run's length: ~0.7× of the high-LR runs that
  reach 100% training accuracy in ~1100 steps (their 30 pruned networks evaluated on 10000 test
  samples are half the FLOPs of that training), 0.08× of the 20000-step LR-0.01 run. Over the
  whole demo sweep it is the figure in bold above. The same three runs the previous version of
  this benchmark used (LR 0.05, 0.1, 0.5) cost 0.52× before this round of work and ~0.3× after
  it: Captum's gradients from one backward pass of the summed outputs instead of one autograd
  root per sample (IG ~5× faster), FCN structured/column pruning evaluated on the kept rows and
  columns, the linear probes on all threads, and probe results encoded in memory and written
  concurrently (a third of the write time).
- On the Colored MNIST CNN (issue #20: 17.5 min of probing after 7.5 min of training, on a busy
  machine) three things made probing cheap: torch threads capped by the load average while a probe
  runs (with 2 threads and another process on a core, the CNN's pruning took 63 s instead of 9 s:
  its operations are small and every parallel region waits for the descheduled thread); pruning
  evaluates every pruned network in one pass over the test split, sliced to its kept units, the
  first layer's outputs shared, channels-last (CPU seconds on the LR-0.1 run: 9.7 before, 2.9
  after, the same accuracies); Integrated Gradients and DeepLift computed exactly as x ⊙ ∇f(x) on
  the bias-free FCN and CNN (positively homogeneous networks, zero baseline), one backward pass
  instead of 32 IG steps and Captum's max-pool rule (3.2 → 0.4 CPU s), and Captum not imported.
- Batched sweeps miss 2.5× on this CPU, and the steps-alone line says why: one stacked step of 8
  runs saves only ~10–25% against 8 sequential bare steps, because each 3×200 FCN step at batch 100
  is already compute-bound here (~2/3 of a 1024² matmul's FLOP rate on one thread), so stacking 8
  runs into batched matmuls removes only the per-step Python/dispatch overhead; recording and
  store creation are per run either way, so the whole-sweep ratio sits near the steps-alone one
  (1.0–1.3× between runs of this benchmark on the loaded machine). On 2 threads stacking gains
  more relative to sequential steps (bigger matmuls split better), but with other processes on
  both cores every 2-thread step is several times slower than a 1-thread one (OpenMP's threads
  wait for each other), so that is no way to a faster sweep here. The 1.55× measured before had
  the sequential runs pay torch's one-off lazy imports (the first optimizer built in a process
  imports torch._dynamo) and ran on 2 threads; both are now out of the comparison. On a GPU,
  where small steps are launch-bound, the gain should be larger (not measured: no GPU here).
- Recording one's own loop (`lrscope.Recorder`) costs what lrtrain's recording costs: both keep
  the same per-step references (the logits and one fused norm vector) and drive the same Recorder
  and writer. Over two runs of `--only api` on this shared machine the CPU-time ratio API /
  lrtrain was 0.97–1.00 (wall time 0.94–1.07: noise); per step the API's call checks add ~10 µs
  (~1% of a parity FCN step) over lrtrain's step. Checking the ids' range at each call cost
  ~25 µs a step in the loop, so it runs once per block.
"""


def machine() -> str:
    from lrscope.machine import describe

    return describe()


def record_section(b: dict) -> list[str]:
    """The minibatch record's bytes per step and the store's growth (store_bench.record_bench)."""
    rows = {(r["classes"], r["policy"]): r for r in b["per_class"]}
    out = ["", "## The minibatch record (bytes per training step; issue #20)", "",
           "Real training (FCN 32-64-C on Gaussian clusters, batch 256, 256 steps) recorded under each "
           "`log_logits` policy; bytes of the store's `log/` group per step on disk (zstd), raw in brackets. "
           "`auto` is the default:", "",
           "| classes | auto picks | full B/step | summary B/step | full / summary |", "|---|---|---|---|---|"]
    for c, auto in b["auto"].items():
        f, s = rows[c, "full"], rows[c, "summary"]
        out.append(f"| {c} | {auto} | {f['log_bytes_per_step']:.0f} ({f['raw_log_bytes_per_step']:.0f}) | "
                   f"{s['log_bytes_per_step']:.0f} ({s['raw_log_bytes_per_step']:.0f}) | "
                   f"{f['log_bytes_per_step'] / s['log_bytes_per_step']:.1f} |")
    out += ["", "A store's growth with run length (100 classes, every default: summary record, a snapshot every "
            "1000 steps, a checkpoint every 2000, train logits where a pass is cheap):", "",
            "| steps | store MB | log MB | snapshots MB | checkpoints MB |", "|---|---|---|---|---|"]
    for r in b["growth"]:
        g = r["groups"]
        out.append(f"| {r['steps']} | {r['store_bytes'] / 2**20:.2f} | {g['log'] / 2**20:.2f} | "
                   f"{g['snapshots'] / 2**20:.2f} | {g['checkpoints'] / 2**20:.2f} |")
    e = b["imagenet"]
    out += ["", f"A 90-epoch ImageNet-shaped run (1.28M samples, batch 256: {e['steps']} steps, 1000 classes): its "
            f"minibatch log under the default (summary) is **{e['summary_log_gb']:.1f} GB** "
            f"({e['summary_raw_gb']:.1f} GB raw), against {e['full_log_gb']:.0f} GB with full logits "
            f"({e['full_raw_gb']:.0f} GB raw; the issue's ~230 GB). The rest of such a store under the default "
            f"schedule, from the shapes (raw): the test logits of {e['snapshots']} full snapshots "
            f"{e['test_logits_gb']:.0f} GB, the final train logits {e['train_logits_gb']:.1f} GB, "
            f"{e['checkpoints']} ResNet-50 checkpoints {e['checkpoints_gb']:.0f} GB: at that scale the snapshot "
            "and checkpoint periods (`--snapshot-every`, `--checkpoint-every`, e.g. one epoch) decide the size, "
            "no longer the log."]
    return out


SECTIONS = ("overhead", "api", "store", "record", "probes", "probes_cnn", "batched", "app")


def overhead_section() -> list[str]:
    """lrtrain vs a bare loop (benchmarks/train_overhead.py), on 1 torch thread for every loop."""
    lines = ["## Training overhead (target: lrtrain ≥ 0.95× a bare loop)", "",
             "Every loop on 1 torch thread (the fairest on this shared 2-core machine), interleaved, best of the "
             "repeats; the wall-time ratio is the issue's steps/s ratio, the CPU-time ratio (the process's CPU "
             "seconds, all threads) is the steadier one while other processes share the cores.", "",
             "| case | steps | bare loop steps/s | lrtrain steps/s | ratio | CPU-time ratio | recording s "
             "| DataLoader per-sample steps/s | ratio |",
             "|---|---|---|---|---|---|---|---|---|"]
    for case, steps, reps in (("parity_fcn", 3000, 3), ("parity_fcn", 10000, 3), ("colored_fashion_cnn", None, 1)):
        r = train_overhead.run(case, steps, repeats=reps, threads=1)
        lines.append(f"| {case} | {r['steps']} | {r['bare_steps_per_s']:.0f} | {r['lrtrain_steps_per_s']:.0f} | "
                     f"{r['ratio_lrtrain']:.3f} | {r['ratio_lrtrain_cpu']:.3f} | {r['record_seconds']:.2f} | "
                     f"{r['dataloader_steps_per_s']:.0f} | {r['ratio_dataloader']:.3f} |")
        print(lines[-1], flush=True)
    lines += ["", "Where the time goes (`train_overhead.py --breakdown`; wall µs per step: the steps best of 9 "
              "interleaved chunks of 100 steps, the recording and setup from the faster of 2 runs; 1 thread):", ""]
    for steps in (3000, 10000):
        lines.append("- " + train_overhead.format_breakdown(
            train_overhead.breakdown("parity_fcn", steps, repeats=9, chunk=100)))
        print(lines[-1], flush=True)
    return lines


def store_section() -> list[str]:
    s = store_bench.run(100)
    return ["## Store", "",
            f"- one parity run (3000 steps): {s['disk_mb']:.1f} MB on disk vs {s['raw_mb']:.1f} MB raw "
            f"(×{s['raw_mb'] / s['disk_mb']:.1f} by Zarr's default zstd); recording {s['record_seconds']:.2f} s "
            f"of a {s['train_seconds']:.1f} s run",
            f"- `open_sweep` over {s['open_sweep_runs']} runs: {s['open_sweep_seconds']:.2f} s (target < 2 s)",
            f"- one sample's test logits across {s['snapshots']} snapshots: "
            f"{s['read_one_sample_all_snapshots_ms']:.0f} ms; one snapshot across {s['samples']} samples: "
            f"{s['read_one_snapshot_all_samples_ms']:.0f} ms (chunks are one snapshot each)"]


def probes_section() -> list[str]:
    p = probe_bench.run()
    total = sum(x["probe_seconds"] for x in p["runs"])
    lines = ["## Probes (target: a small fraction of training)", "",
             "Every probe on the embedded demo's runs (examples/demo.toml: parity + FCN 3×200, its six "
             "learning rates, one seed, each trained to 100% training accuracy or 20000 steps), probed in "
             f"one process (Captum's import, {p['import_seconds']:.1f} s once per process, not charged). "
             "Probing is the wall time of `compute_run`: reading the run, computing and writing every probe:", ""]
    lines += [f"- lr {x['lr']:g}: {x['iterations']} steps, {x['snapshots']} snapshots, training "
              f"{x['train_seconds']:.1f} s, probing {x['probe_seconds']:.1f} s "
              f"({x['probe_seconds'] / x['train_seconds']:.2f}× training)" for x in p["runs"]]
    lines += ["", f"All {len(p['runs'])} runs: training {p['train_seconds']:.1f} s, probing {total:.1f} s "
              f"(**{total / p['train_seconds']:.2f}× training**). Each probe's own compute (reading what it "
              "needs, not writing; the writes overlap the next probe):", "",
              "| probe | seconds | × training |", "|---|---|---|"]
    lines += [f"| {k} | {v:.2f} | {v / p['train_seconds']:.3f} |" for k, v in p["probes"].items()]
    return lines


def probes_cnn_section() -> list[str]:
    """The probe cost of one Colored MNIST CNN replication run (benchmarks/probe_bench.py:run_cnn)."""
    c = probe_bench.run_cnn()
    return (["## Probes on a CNN replication run (target: pruning curves, linear probes and attributions "
             "≤ 0.25× training)", ""] + probe_bench.cnn_lines(c))


def api_section() -> list[str]:
    """A loop of one's own recorded through lrscope.Recorder vs lrtrain vs a bare loop (api_overhead.py)."""
    lines = ["## Recording your own loop (target: `lrscope.Recorder` costs no more than lrtrain)", "",
             "The same FCN, data and minibatch sequence: a bare loop, lrtrain's loop, and the bare loop handing "
             "each step's ids, logits and loss to `Recorder.step` (default recording; the two stores are bitwise "
             "equal). 1 torch thread, interleaved, best of 3; setup and the final snapshot included.", "",
             "| case | steps | bare steps/s | lrtrain steps/s | ratio | API steps/s | ratio | API / lrtrain "
             "| (CPU time) |", "|---|---|---|---|---|---|---|---|---|"]
    for case, steps in (("parity_fcn", 3000), ("parity_fcn", 10000)):
        r = api_overhead.run(case, steps, repeats=3, threads=1)
        lines.append(f"| {case} | {r['steps']} | {r['bare_steps_per_s']:.0f} | {r['lrtrain_steps_per_s']:.0f} | "
                     f"{r['ratio_lrtrain']:.3f} | {r['api_steps_per_s']:.0f} | {r['ratio_api']:.3f} | "
                     f"{r['ratio_api_lrtrain']:.3f} | {r['ratio_api_lrtrain_cpu']:.3f} |")
        print(lines[-1], flush=True)
    u = api_overhead.steps_only(repeats=15)
    lines += ["", f"Per step, without store writes (wall µs, best of 15 interleaved chunks of 100 steps, parity FCN): "
              f"bare {u['bare_step_us']:.0f}, lrtrain's step {u['lrtrain_step_us']:.0f} "
              f"({u['lrtrain_step_us'] - u['bare_step_us']:+.0f}), the bare step plus `Recorder.step`'s work "
              f"{u['api_step_us']:.0f} ({u['api_step_us'] - u['bare_step_us']:+.0f}): both keep the logits and one "
              "fused norm vector a step; the API also checks the call (types, dtypes, shapes; the ids' range once per "
              "block)."]
    print(lines[-1], flush=True)
    n = api_overhead.example_lines()
    lines += ["", "Lines of user code (neither blank, comment nor docstring) of the examples, data preparation "
              "included: " + ", ".join(f"`examples/{k}` {v}" for k, v in n.items()) + "."]
    return lines


def batched_section() -> list[str]:
    b = batched_bench.run(3000, repeats=2, threads=1)
    return ["## Batched sweeps (target: ≥ 2.5× running the runs one after another)", "",
            f"{b['k']} parity FCN 3×200 runs × {b['steps']} steps, default recording, 1 torch thread, in one "
            f"process after torch's lazy imports: sequential {b['sequential_s']:.1f} s, `train_batched` "
            f"{b['batched_s']:.1f} s: **{b['speedup']:.2f}×** (CPU time {b['cpu_speedup']:.2f}×; best of 2 "
            f"interleaved). The steps alone (wall, best of 5 interleaved chunks of 50 steps): {b['k']} bare "
            f"sequential steps {b['k_bare_steps_us']:.0f} µs, one stacked step {b['stacked_step_us']:.0f} µs: "
            f"{b['steps_speedup']:.2f}×, the most stacking can give "
            f"here (on 2 threads: {b['k_bare_steps_us_2threads']:.0f} vs {b['stacked_step_us_2threads']:.0f} µs, "
            f"{b['steps_speedup_2threads']:.2f}×)."]


def app_section() -> list[str]:
    a = app_bench.run((12, 100))
    if "skipped" in a:
        return []
    return (["## The explorer (`lrprobe serve`; targets: first paint < 3 s for the demo sweep, < 10 s for "
             "100 runs, a slider move < 0.5 s)", "",
             "Measured in Debian's headless Chromium through Playwright (benchmarks/app_bench.py, the "
             "driver of tests/test_app_browser.py): from `goto` to the plots drawn; from a widget change "
             "to the server's answer on the page.", "",
             "| runs | first paint s | metric change s | slider move s | sample selection s |",
             "|---|---|---|---|---|"]
            + [f"| {t['runs']} | {t['first_paint_s']:.2f} | {t['metric_change_s']:.2f} | {t['slider_s']:.2f} | "
               f"{t['sample_select_s']:.2f} |" for t in a.values()])


BUILDERS = {"overhead": overhead_section, "api": api_section, "store": store_section,
            "record": lambda: record_section(store_bench.record_bench())[1:], "probes": probes_section,
            "probes_cnn": probes_cnn_section, "batched": batched_section, "app": app_section}
HEADINGS = {"overhead": "## Training overhead", "api": "## Recording your own loop", "store": "## Store",
            "record": "## The minibatch record",
            "probes": "## Probes (", "probes_cnn": "## Probes on a CNN", "batched": "## Batched sweeps",
            "app": "## The explorer"}


def replace_sections(text: str, new: dict[str, list[str]]) -> str:
    """`text` (RESULTS.md) with the `## ` sections named in `new` replaced (appended before the
    notes when missing) and the notes rewritten from NOTES; everything else as it was."""
    parts = re.split(r"(?m)^(?=## )", text)
    head, body = parts[0], parts[1:]
    done = set()
    out = [head]
    for part in body:
        name = next((k for k, h in HEADINGS.items() if part.startswith(h)), None)
        if part.startswith("## Reading these numbers"):
            for k in new:
                if k not in done:
                    out.append("\n".join(new[k]) + "\n\n")
                    done.add(k)
            out.append(NOTES.lstrip("\n"))
        elif name in new:
            out.append("\n".join(new[name]) + "\n\n")
            done.add(name)
        else:
            out.append(part)
    return "".join(out).rstrip("\n") + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(SECTIONS),
                    help=f"comma-separated sections to regenerate ({', '.join(SECTIONS)}); default all")
    a = ap.parse_args()
    only = [x.strip() for x in a.only.split(",") if x.strip()]
    bad = [x for x in only if x not in SECTIONS]
    if bad or not only:
        ap.error(f"--only: unknown section(s) {', '.join(bad) or '(none given)'}; choose from {', '.join(SECTIONS)}")
    out = Path(__file__).with_name("RESULTS.md")
    new = {}
    for name in only:
        new[name] = BUILDERS[name]()
        print("\n".join(new[name]), flush=True)
    if set(only) == set(SECTIONS) or not out.exists():
        lines = ["# Benchmark results", "",
                 f"Regenerated by `python benchmarks/run_all.py` on {time.strftime('%Y-%m-%d')}.", "",
                 f"Machine: {machine()}", "",
                 "Best of 3 interleaved repeats; this machine's throughput varies by ±15% between runs, so "
                 "ratios are measured side by side in one process.", ""]
        for name in SECTIONS:
            if new.get(name):
                lines += new[name] + [""]
        text = "\n".join(lines) + NOTES.lstrip("\n")
        if out.exists():  # sections other scripts write (placement_bench.py's) stay, after the notes
            kept = [part for part in re.split(r"(?m)^(?=## )", out.read_text())[1:]
                    if not part.startswith("## Reading these numbers")
                    and not any(part.startswith(h) for h in HEADINGS.values())]
            text = text.rstrip("\n") + "\n\n" + "".join(kept).rstrip("\n") + "\n" if kept else text
    else:  # each regenerated section says when and where
        stamp = (f"Regenerated on {time.strftime('%Y-%m-%d')} by `python benchmarks/run_all.py --only "
                 f"{','.join(only)}`; machine: {machine()}.")
        text = replace_sections(out.read_text(), {k: v[:1] + ["", stamp] + v[1:] for k, v in new.items() if v})
    out.write_text(text)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
