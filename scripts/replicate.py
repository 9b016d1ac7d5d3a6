"""Run the replication sweeps (resuming what is done), probe them, regenerate docs/replication.md.

    python scripts/replicate.py                      # every sweep in examples/replication/
    python scripts/replicate.py --only parity-fcn    # one of them
    python scripts/replicate.py --no-train           # only re-probe and rewrite the document

Runs go to replication/runs/<sweep>/ (not committed: large); the document and its figures
(docs/replication.md, docs/replication/*.png) are. Sweeps that have not been run are listed
in the document with the command that runs them.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SPECS = REPO / "examples" / "replication"
PROBES = ["accuracy", "loss_ratio", "compressibility", "representation", "pruning"]
PARAMS = {"criterion": "all"}  # κ-prunability under every structured-pruning criterion
CRITERIA_LABEL = {"incoming": "incoming L2, per layer (default)", "incoming-global": "incoming L2, global",
                  "outgoing": "outgoing L2, per layer", "in-x-out": "incoming × outgoing, per layer"}
METRICS = [  # sweep variable, label, paper column (Table 1), scale of the paper's number
    ("unbiased_accuracy_final", "unbiased test accuracy", "acc", 0.01),
    ("prunability", "prunability", "prun", 1.0),
    ("pruned_accuracy", "mean pruned accuracy (ours, not the paper's)", "", 1.0),  # an extra view
    ("activation_compressibility_final", "activation compressibility", "comp", 1.0),
    ("csi_mean_final", "average CSI", "csi", 1.0),
    ("class_separation_final", "class separation R²", "sep", 1.0),
]
# Barsbey et al., supplement Table 1: LR range and (min, max) of each metric over it.
PAPER = {
    "parity-fcn": ("Parity / FCN", (0.01, 0.75), {"acc": (55.31, 85.663), "prun": (0.56, 0.782),
                   "comp": (0.333, 0.679), "csi": (0.032, 0.152), "sep": (0.008, 0.136)}),
    "moon_star-fcn": ("Moon-Star / FCN", (0.01, 0.75), {"acc": (74.315, 81.156), "prun": (0.954, 0.971),
                      "comp": (0.375, 0.457), "csi": (0.257, 0.34), "sep": (0.2, 0.326)}),
    "colored_mnist-fcn": ("Colored MNIST / FCN", (0.001, 0.5), {"acc": (72.727, 76.11), "prun": (0.935, 0.968),
                          "comp": (0.285, 0.389), "csi": (0.243, 0.381), "sep": (0.291, 0.387)}),
    "colored_mnist-cnn": ("Colored MNIST / CNN", (0.01, 0.35), {"acc": (88.2, 91.48), "prun": (0.532, 0.931),
                          "comp": (0.372, 0.643), "csi": (0.302, 0.576), "sep": (0.376, 0.692)}),
    "double_mnist-fcn": ("Double MNIST / FCN", (0.001, 0.5), {"acc": (69.287, 72.47), "prun": (0.986, 0.999),
                         "comp": (0.236, 0.406), "csi": (0.22, 0.485), "sep": (0.428, 0.481)}),
    "double_mnist-cnn": ("Double MNIST / CNN", (0.005, 0.4), {"acc": (83.987, 94.57), "prun": (0.383, 0.916),
                         "comp": (0.235, 0.772), "csi": (0.187, 0.476), "sep": (0.204, 0.55)}),
}


def usable_lrs(sw) -> tuple[list[float], str]:
    """The paper's rule: LRs in ascending order up to (not including) the first where a seed
    diverged or lost > 25 points of unbiased accuracy against the best LR's mean."""
    lrs = sorted(np.unique(sw.lr.values).tolist())
    acc = sw.unbiased_accuracy_final.values.astype(float)
    status = sw.status.values
    done = status == "completed"
    means = {lr: np.nanmean(acc[(sw.lr.values == lr) & done]) for lr in lrs if ((sw.lr.values == lr) & done).any()}
    best_lr = max(means, key=lambda lr: means[lr]) if means else None
    keep = []
    for lr in lrs:
        sel = sw.lr.values == lr
        if (status[sel] == "diverged").any():
            return keep, f"LR {lr:g} diverged in {int((status[sel] == 'diverged').sum())} of {int(sel.sum())} seeds"
        if (status[sel] != "completed").any():
            return keep, f"LR {lr:g} not finished"
        if lr > best_lr and np.nanmin(acc[sel]) < means[best_lr] - 0.25:
            return keep, f"LR {lr:g} lost > 25 points of accuracy in a seed"
        keep.append(lr)
    return keep, "no LR in the grid diverged"


def stop_line(sw, lrs, spec) -> list[str]:
    """Whether the usable LRs' runs reached the paper's stop criterion (100% training accuracy)
    or were cut by the spec's max_steps, per LR."""
    if "stop_criterion_met" not in sw.coords:
        return []
    sel = np.isin(sw.lr.values, lrs)
    met = sw.stop_criterion_met.values.astype(bool)
    at_cap = {lr: int((~met[sw.lr.values == lr]).sum()) for lr in lrs}
    cut = [f"LR {lr:g}: {n}" for lr, n in at_cap.items() if n]
    max_steps = spec[0].max_steps
    if not cut:
        return [f"Every run at the LRs used reached the stop criterion ({int(sel.sum())} runs; "
                f"the spec's cap is {max_steps} steps)."]
    return [f"Runs at the LRs used that ended at the spec's cap of {max_steps} steps short of the stop criterion: "
            f"{int((~met[sel]).sum())} of {int(sel.sum())} ({', '.join(cut)})."]


def section(name: str, runs: Path, figdir: Path) -> tuple[list[str], list[dict]]:
    import lrscope
    from lrscope.probe.sweep import loss_ratio_correlation
    from lrscope.store import schema as S
    from lrscope.store.reader import open_store
    from lrscope.viz.figures import per_lr, trend
    from lrscope.viz.static import write_figures

    title, (plo, phi), paper = PAPER[name]
    sw = lrscope.open_sweep(runs)
    in_progress = None, (int((sw.status.values == "completed").sum()), sw.sizes["run"])
    if "unbiased_accuracy_final" not in sw:  # nothing finished and probed yet
        return in_progress
    lrs, why = usable_lrs(sw)
    if len(lrs) < 2:  # too early to say anything
        return in_progress
    n_runs = sw.sizes["run"]
    wall = sum(float(open_store(p).attrs.get(S.ATTR_TIMINGS, {}).get("wall_seconds", 0)) for p in sw.stores) / 60
    seeds = len(np.unique(sw.seed.values))
    from lrscope.train.sweep import load_spec

    spec = load_spec(SPECS / f"{name}.toml")
    planned = len(spec)
    sweep_label = title
    if n_runs < planned:
        why = f"**sweep in progress**: {n_runs} of {planned} runs exist; higher LRs not run yet"
        sweep_label = f"{title} (partial: {len(lrs)} of {len({c.lr for c in spec})} LRs)"
    lines = [f"## {title}", "",
             f"Spec: `examples/replication/{name}.toml` — {n_runs} runs ({seeds} seeds), "
             f"{wall:.0f} CPU-minutes of training. LRs used: {', '.join(f'{v:g}' for v in lrs)} "
             f"(stopped there: {why}). Paper's range: {plo:g} → {phi:g}.", "", *stop_line(sw, lrs, spec), "",
             "| metric | ours: lowest LR | ours: highest LR | ours min → max | paper min → max "
             "| Spearman ρ (metric, LR) | rises? |",
             "|---|---|---|---|---|---|---|"]
    verdicts = []
    for var, label, col, scale in METRICS:
        if var not in sw or len(lrs) < 2:
            continue
        all_lrs, mean, std = per_lr(sw, var)  # seed mean/std per LR; keep the usable LRs
        mean, std = mean[np.isin(all_lrs, lrs)], std[np.isin(all_lrs, lrs)]
        rho, word = trend(lrs, mean)
        f = 100.0 if scale == 0.01 else 1.0
        rises = word == "rises"
        if col in paper:  # a claim of the paper's for this sweep
            verdicts.append({"sweep": sweep_label, "metric": label, "rho": rho, "rises": rises,
                             "low": mean[0] * f, "high": mean[-1] * f})
        pmin, pmax = paper.get(col, (None, None))
        lines.append(f"| {label} | {mean[0] * f:.3g} ± {std[0] * f:.2g} | {mean[-1] * f:.3g} ± {std[-1] * f:.2g} | "
                     f"{np.nanmin(mean) * f:.3g} → {np.nanmax(mean) * f:.3g} | "
                     f"{'-' if pmin is None else f'{pmin:g} → {pmax:g}'} | {rho:+.2f} | "
                     f"{'yes' if rises else '**no**'} |")
    if "prunability_by_criterion" in sw:  # the paper's prunability under each pruning criterion
        lines += ["", "κ-prunability (the paper's retention ratio, not clipped) under each structured-pruning "
                      "criterion, seed means:", "",
                  "| criterion | lowest LR | highest LR | Spearman ρ (metric, LR) |", "|---|---|---|---|"]
        for crit in sw.criterion.values:
            tmp = sw.assign(_p=sw.prunability_by_criterion.sel(criterion=crit))
            all_lrs, mean, _ = per_lr(tmp, "_p")
            mean = mean[np.isin(all_lrs, lrs)]
            if not np.isfinite(mean).any():
                continue
            rho, _ = trend(lrs, mean)
            label = CRITERIA_LABEL.get(str(crit), str(crit))
            lines.append(f"| {label} | {mean[0]:.3g} | {mean[-1]:.3g} | {rho:+.2f} |")
    try:
        sub = sw.isel(run=np.flatnonzero(np.isin(sw.lr.values, lrs)))
        c = loss_ratio_correlation(sub)
        r, p, n = float(c.pearson_r), float(c.p_value), int(c.n_runs)
        cs = loss_ratio_correlation(sub, "max_loss_ratio_smoothed")
        lines += ["", f"Fig. 12: maximum bias-conflicting loss ratio of a minibatch vs unbiased accuracy over {n} "
                      f"runs: Pearson r = {r:+.2f} (p = {p:.2g}); the paper reports a positive correlation. "
                      f"The maximum of the epoch running mean instead: r = {float(cs.pearson_r):+.2f} "
                      f"(p = {float(cs.p_value):.2g})."]
        verdicts.append({"sweep": sweep_label, "metric": "max BC loss ratio ~ accuracy", "rho": r,
                         "rises": r > 0 and p < 0.05, "low": float("nan"), "high": float("nan")})
    except Exception as e:  # noqa: BLE001 - reported in the document
        lines += ["", f"Fig. 12 correlation: not computable ({e})."]
    figs = write_figures([runs], figdir, fmt="png", names=["metrics_vs_lr", "neuron_survival", "loss_ratio_vs_accuracy",
                                                             "pruning_curves"])
    lines += [""] + [f"![{p.stem}](replication/{p.name})" for p in figs if p.suffix == ".png"]
    return lines + [""], verdicts


def previous_document(doc: Path) -> tuple[dict[str, list[str]], dict[str, list[str]], dict[str, str]]:
    """The sections (title -> lines), claims-table rows (title -> rows) and the date of each
    section's results (title -> date) in the document being replaced, so sweeps without stores on
    this machine keep their last results, with the date they were computed on."""
    import re

    if not doc.exists():
        return {}, {}, {}
    text = doc.read_text().splitlines()
    date = next((m.group(1) for ln in text if (m := re.search(r" on (\d{4}-\d{2}-\d{2})", ln))), "?")
    dates: dict[str, str] = {}
    titles = {t for t, _, _ in PAPER.values()}
    sections: dict[str, list[str]] = {}
    current = None
    for ln in text:
        if ln.startswith("## "):
            current = ln[3:].strip() if ln[3:].strip() in titles else None
            if current:
                sections[current] = []
            continue
        if current is not None:
            sections[current].append(ln)
    for t in sections:  # a kept section loses its own "not re-run" note (its date is kept) and blank ends
        kept = [re.match(r"> Not re-run since (\S+) ", ln) for ln in sections[t]]
        dates[t] = next((m.group(1) for m in kept if m), date)
        lines = [ln for ln in sections[t] if not ln.startswith("> Not re-run since")]
        while lines and not lines[0].strip():
            lines.pop(0)
        while lines and not lines[-1].strip():
            lines.pop()
        sections[t] = lines
    rows: dict[str, list[str]] = {}
    for ln in text:
        for t in titles:
            if ln.startswith(f"| {t} |") or ln.startswith(f"| {t} (") and "|" in ln[len(t) + 3:]:
                base = re.sub(r"^\| " + re.escape(t) + r" \([^)]*\) \|", f"| {t} |", ln)
                rows.setdefault(t, []).append(base)
    return sections, rows, dates


def machine() -> str:
    from lrscope.machine import describe

    return describe()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", help="sweep names (spec file stems)")
    ap.add_argument("--out", default=str(REPO / "replication" / "runs"))
    ap.add_argument("--workers", type=int, default=2, help="runs trained and probed at once")
    ap.add_argument("--no-train", action="store_true", help="probe and write the document only")
    ap.add_argument("--doc", default=str(REPO / "docs" / "replication.md"))
    args = ap.parse_args(argv)

    from lrscope import __version__
    from lrscope.errors import LrscopeError, RunInterrupted
    from lrscope.probe.runner import compute_paths
    from lrscope.train.sweep import load_spec, run_sweep

    names = [p.stem for p in sorted(SPECS.glob("*.toml"))]
    todo = args.only or names
    for name in todo:
        if name not in names:
            sys.exit(f"unknown sweep {name!r}; valid: {', '.join(names)}")
        runs = Path(args.out) / name
        if not args.no_train:
            print(f"== {name}: training (resumes what is done)", flush=True)
            try:
                run_sweep(load_spec(SPECS / f"{name}.toml"), runs, workers=args.workers, progress=True)
            except RunInterrupted as e:  # a signal: the runs checkpointed; the same command resumes
                print(f"{name}: {e}", file=sys.stderr)
                sys.exit(128 + e.signum)
            except LrscopeError as e:
                sys.exit(f"{name}: {e}")
        if runs.exists() and any(runs.glob("*.zarr")):
            print(f"== {name}: probing", flush=True)
            compute_paths(runs, names=PROBES, progress=True, workers=args.workers, params=PARAMS)

    doc = Path(args.doc)
    figdir = doc.parent / "replication"
    old_sections, old_rows, old_dates = previous_document(doc)
    body, verdicts, missing, progress = [], [], [], {}
    kept_rows: list[str] = []
    for name in names:
        runs = Path(args.out) / name
        if not (runs.exists() and any(runs.glob("*.zarr"))):
            title = PAPER[name][0]
            if title in old_sections and (name not in todo or args.no_train):  # not run here: keep the last results
                old_date = old_dates[title]
                current = any("not clipped" in ln for ln in old_sections[title])  # has the criterion table
                body += [f"## {title}", "", f"> Not re-run since {old_date} (no stores for this sweep here): the "
                         "numbers and figures below are that run's" + (
                             ", under today's definitions (κ-prunability not clipped, with the criterion table)."
                             if current else ", computed with that version's definitions (κ-prunability then "
                             "clipped each retention ratio at 1; no criterion table)."), "",
                         *old_sections[title], ""]
                kept_rows += [r.replace(f"| {title} |", f"| {title} ({old_date}) |", 1)
                              for r in old_rows.get(title, [])]
                continue
            missing.append(name)
            continue
        lines, v = section(name, runs, figdir)
        if lines is None:
            progress[name] = v
            missing.append(name)
            continue
        body += lines
        verdicts += v
    head = ["# Replication on a CPU: parity, moon-star, Colored/Double MNIST on Fashion-MNIST", "",
            f"Regenerated by `python scripts/replicate.py` (or `make replicate`) on {time.strftime('%Y-%m-%d')} "
            f"with lrscope {__version__}; {machine()}.", "",
            "Each sweep trains every (LR, seed) of its spec in `examples/replication/` to 100% training accuracy "
            "(or the spec's `max_steps`), probes it (`" + ", ".join(PROBES) + "`), and compares with the "
            "paper's Table 1 row (Barsbey et al., supplement). The paper's table gives each metric's min and max "
            "over the LR range; we give the seed-mean at our lowest and highest usable LR, our min → max, and "
            "the direction as Spearman's ρ between LR and the seed-mean metric. Usable LRs follow the paper: "
            "ascending, up to the first LR where a seed diverged or lost more than 25 points of accuracy.", "",
            "## The paper's claims, as this CPU sees them", ""]
    if verdicts:
        head += ["| sweep | claim | ours (lowest → highest LR) | ρ or r | holds? |", "|---|---|---|---|---|"]
        for v in verdicts:
            span = "" if not np.isfinite(v["low"]) else f"{v['low']:.3g} → {v['high']:.3g}"
            claim = v["metric"] + (" rises with LR" if "~" not in v["metric"] else " (positive)")
            head.append(f"| {v['sweep']} | {claim} | {span} | {v['rho']:+.2f} | {'yes' if v['rises'] else '**no**'} |")
    if kept_rows:
        if not verdicts:
            head += ["| sweep | claim | ours (lowest → highest LR) | ρ or r | holds? |", "|---|---|---|---|---|"]
        head += kept_rows
    if verdicts or kept_rows:
        head.append("")
    head += [
        "## Where we disagree with the paper, and why we think so", "",
        "- **Prunability (the mean retention ratio; the paper's text sums the ratios, Table 1 is on the mean's "
        "scale) falls with the LR on parity, under every pruning criterion we "
        "tried, and stays flat on moon-star.** Our κ-prunability is the paper's stated definition: the mean over "
        "κ = 0 … 0.9 of the retention ratio Acc(f^κ)/Acc(f), not clipped (a pruned network may beat the unpruned "
        "one; the paper's own Double MNIST FCN row reaches 1.029), structured (whole neurons), on the unbiased "
        "test set. Each section's criterion table gives it under four rankings of the neurons — incoming-weight "
        "L2 per layer (our default) or global, outgoing-weight L2, incoming × outgoing. On parity it falls under "
        "all four (0.995 → 0.784 with the default, ρ ≤ −0.95 for each); on the rebuilt moon-star it stays "
        "flat under all four (0.969 → 0.974, ρ between +0.04 and +0.29), inside the paper's own narrow "
        "moon-star range (0.954 → 0.971). A low-LR parity model sits near chance (≈ 60%): pruning cannot take "
        "a balanced binary classifier much below chance, so its retention ratio stays near 1, while a high-LR "
        "model at ≈ 99% has far to fall. The paper's parity row (0.56 → 0.78) is not reachable as a ratio at "
        "55% accuracy (it would need pruned accuracies near 31%, far below chance). The mean pruned accuracy "
        "(the mean of Acc(f^κ) itself) is in each table as a view of ours, labelled so: it rises with the LR, "
        "inheriting the rise of the unpruned accuracy; it is not the paper's quantity and we do not compare it "
        "with the paper's numbers.",
        "- **Prunability rises with the LR for the CNN, not for the FCN**: it rose on both CNN sweeps "
        "(Colored MNIST 0.45 → 0.75, Double MNIST 0.47 → 0.69; both re-run 2026-12-07 unclipped, ρ = +1.0 "
        "under all four pruning criteria on each) and fell "
        "on the Colored and Double MNIST FCN sweeps (0.905 → 0.892, 1.02 → 0.863; re-run 2026-12-06). The "
        "FCNs' low-LR models are the near-chance or spurious-cue ones (Double MNIST FCN at LR 0.001: 12.7% "
        "unbiased accuracy, about what predicting the right-hand digit gets), whose accuracy pruning cannot "
        "lower much. The paper's own FCN rows on the MNIST sets barely move either (Colored MNIST 0.935 → "
        "0.968, Double MNIST 0.986 → 0.999).",
        "- **Moon-star's high end and its activation compressibility overshoot**: unbiased accuracy 73.3% → "
        "84.0% against the paper's 74.3% → 81.2% on the calibration's own seeds (0-2, data seed 0). On unseen "
        "seeds (data seed 1, seeds 3-7; docs/moon_star.md, 2026-12-06) it goes 74.2 ± 0.7% → 81.4 ± 1.2% from "
        "LR 0.01 to 0.25, and LR 0.75 is past the edge of stability (one seed of five trains, one diverges, "
        "three stall); and activation compressibility reaches "
        "0.83 against the paper's 0.457: our 28×28 noisy images leave the high-LR network few active neurons.",
        "- **Unbiased accuracy on the Colored MNIST CNN rises once the runs train longer**: capped at 3000 "
        "steps (the 2026-11-23 sweep) it went 39.6 → 47.8 (ρ = +0.5), its runs ending before the paper's stop "
        "criterion (LR 0.01 at 98.7% train accuracy: the unfit samples are the bias-conflicting ones, 125 of "
        "5000 at ρ = 0.025). Trained to 100% train accuracy or at most 8000 steps (2026-12-07) it goes 48.6 ± "
        "0.7 → 53.9 ± 2.3 (ρ = +1.0), and class separation rises with it (ρ = +1.0); 6 of the 12 runs at "
        "the usable LRs still end at the cap, all three at LR 0.01 among them. Its level stays far below "
        "the paper's 88 – 91%: the ×0.125 width, the Fashion-MNIST base and the 5000-sample subset are the "
        "differences, untested one by one. The Double MNIST CNN, re-run the same way (2026-12-07), goes 51.9 ± "
        "1.7 → 59.7 ± 1.4 (ρ = +0.9; the paper: 84 → 95%), LR 0.35 now usable where the 3000-step sweep lost "
        "more than 25 points there; its three LR-0.01 runs end at the cap with 99.8%, 98.4% and 95.1% train "
        "accuracy.",
        "- **Class separation R² does not rise steadily on the two MNIST-style FCN sweeps** (Spearman ρ "
        "+0.2 on Colored MNIST, +0.1 on Double MNIST, which goes 0.06 → 0.40 but peaks at 0.49 in between); "
        "it does on parity, moon-star and both CNNs trained up to 8000 steps (Colored MNIST 0.44 → 0.53, "
        "ρ = +1.0; Double MNIST 0.41 → 0.48, ρ = +0.9, where its 3000-step sweep of 2026-11-23 gave ρ = +0.4). "
        "These sweeps are CPU-sized (subsets, capped steps, a ×0.125 CNN); we have not found out which of "
        "those choices, if any, flattens the FCNs'.",
        "- **Fig. 12 on the CNNs does not hold**: trained longer, the Colored MNIST CNN's per-minibatch "
        "maximum loss ratio correlates with unbiased accuracy at r = +0.44 (p = 0.15, 12 runs), against +0.80 "
        "when the runs were capped at 3000 steps; the Double MNIST CNN's at r = +0.49 (p = 0.061, 15 runs; "
        "+0.46 at the 3000-step cap). Low-LR runs that train longer draw more minibatches to take the "
        "maximum over (see the next item).",
        "- **Fig. 12's maximum is over single minibatches** (the paper: \"the maximum loss ratio (i.e. BC "
        "loss/total minibatch loss) encountered during training\"), from the logits recorded at every step. "
        "An earlier version of this page took the maximum of an epoch running mean of the ratio instead, "
        "expecting single minibatches to be too noisy: that maximum sits at about the same value at every "
        "LR and does not track accuracy (each section gives both correlations). The per-minibatch maximum "
        "does, although low-LR runs are longer and so draw more minibatches to take a maximum over.",
        "- **The moon-star generator's settings are ours**: shapes and quadrants after Geirhos et al.'s toy "
        "data (rgeirhos/shortcut-perspective); the paper gives no rendering details, so image size, jitter "
        "and noise were calibrated (28×28, jitter 0.1, noise 0.35, 4000 training images) to put unbiased "
        "accuracy near the paper's 74% at LR 0.01 and 81% at 0.75; docs/moon_star.md has the settings "
        "tried. (An earlier, far easier moon-star reached ≈ 98% at LR 0.01 and left the LR nothing to "
        "change.)",
        "- A correlation counts as holding only when it is positive with p < 0.05.",
        "- **The parity generator's sizes are ours** (the paper does not give them): C = 4 core bits, S = 1 "
        "spurious bit, N = 30 noise bits, chosen by a one-seed scan of N at LR 0.01 and 0.75 trained to 100% "
        "training accuracy (unbiased test accuracy): N = 20: 0.94 / 1.00; N = 25: 0.78 / 1.00; "
        "**N = 30: 0.57 / 0.99**; N = 35: 0.51 / 0.99; N = 45: 0.50 / 0.82. N = 30 puts the low end at the "
        "paper's 55%; the high end overshoots the paper's 86%.",
        "- The MNIST-style sweeps run on CPU-sized subsets (see each spec), on the Fashion-MNIST base, with "
        "a capped number of steps and the CNN at width ×0.125: their absolute numbers are not the paper's "
        "MNIST ones; the directions are what we compare.", "",
        "## How to reproduce", "",
        "```bash",
        "make replicate                       # every sweep: train (resuming), probe, rewrite this page",
        "make replicate ONLY=parity-fcn       # one sweep",
        "python scripts/replicate.py --no-train   # re-probe and rewrite only",
        "```", "",
        "Runs are written to `replication/runs/<sweep>/` (not committed); Fashion-MNIST comes from Debian's "
        "`dataset-fashion-mnist` package (`make system` installs it).", ""]
    if missing:
        head += ["## Not run yet", "", "These sweeps have specs but no results in this document yet "
                 "(each resumes where it stopped):", ""]
        head += [f"- `{m}`: `python scripts/replicate.py --only {m}`"
                 + (f" (in progress: {progress[m][0]} of {progress[m][1]} runs finished)" if m in progress else "")
                 for m in missing]
        head.append("")
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text("\n".join(head + body))
    print(f"wrote {doc}")


if __name__ == "__main__":
    main()
