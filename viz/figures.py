"""HoloViews figure builders, one per paper figure kind. Each takes the sweep Dataset from
``lrscope.open_sweep`` (with probes) and returns a HoloViews object that displays in Jupyter,
renders to bokeh for the HTML report, and to matplotlib for static figures."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import holoviews as hv
import holoviews.plotting.bokeh  # noqa: F401  (registers the bokeh backend: builders' options need one)
import numpy as np
import xarray as xr
from bokeh.palettes import Viridis256

from ..probe.registry import headlines

HEADLINE = [(h.var, h.label) for h in headlines()]  # each declared with its probe (probe/registry.py)
FINISHED = ("completed",)


def _palette(n: int) -> list[str]:
    if n <= 1:
        return [Viridis256[0]]
    return [Viridis256[int(i * 230 / (n - 1))] for i in range(n)]


def _ok(sw: xr.Dataset) -> np.ndarray:
    return np.isin(sw.status.values, FINISHED)


def lr_values(sw: xr.Dataset) -> np.ndarray:
    return np.unique(sw.lr.values[_ok(sw)])


def per_lr(sw: xr.Dataset, var: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seed mean and standard deviation of a per-run scalar at each learning rate (finished runs)."""
    ok = _ok(sw)
    vals = sw[var].values.astype(float)
    lrs = lr_values(sw)
    mean = np.array([np.nanmean(vals[ok & (sw.lr.values == lr)]) if np.isfinite(vals[ok & (sw.lr.values == lr)]).any()
                     else np.nan for lr in lrs])
    std = np.array([np.nanstd(vals[ok & (sw.lr.values == lr)]) if np.isfinite(vals[ok & (sw.lr.values == lr)]).any()
                    else np.nan for lr in lrs])
    return lrs, mean, std


def trend(lrs, mean) -> tuple[float, str]:
    """Direction of a seed-mean metric over the learning rates: Spearman's ρ and a word for it,
    "rises" when ρ > 0.5 and the highest LR ends above the lowest, "falls" in the mirror case,
    else "no clear trend" (fewer than three LRs with values: "-")."""
    from scipy import stats

    lrs, mean = np.asarray(lrs, float), np.asarray(mean, float)
    ok = np.isfinite(mean)
    if ok.sum() < 3 or np.ptp(mean[ok]) == 0:
        return float("nan"), "-"
    rho = float(stats.spearmanr(lrs[ok], mean[ok]).statistic)
    first, last = mean[ok][0], mean[ok][-1]
    if rho > 0.5 and last > first:
        return rho, "rises"
    if rho < -0.5 and last < first:
        return rho, "falls"
    return rho, "no clear trend"


def metrics_vs_lr(sw: xr.Dataset, metrics=HEADLINE, normalise: bool = True) -> hv.Overlay:
    """Metrics against the learning rate, each min-max normalised over the LR means as in the
    paper's Figs. 3–5 (seed mean ± std; diverged runs marked with a red x at the bottom)."""
    colors = _palette(len(metrics))
    items = []
    for (var, label), c in zip(metrics, colors):
        if var not in sw:
            continue
        lrs, mean, std = per_lr(sw, var)
        if not np.isfinite(mean).any():
            continue
        if normalise:
            lo, hi = np.nanmin(mean), np.nanmax(mean)
            scale = (hi - lo) if hi > lo else 1.0
            mean, std = (mean - lo) / scale, std / scale
        items.append(hv.Curve((lrs, mean), "learning rate", "normalised value", label=label).opts(color=c))
        items.append(hv.ErrorBars((lrs, mean, std), "learning rate", ["normalised value", "std"]).opts(color=c))
        items.append(hv.Scatter((lrs, mean), "learning rate", "normalised value", label=label).opts(color=c, size=6))
    div = sw.status.values == "diverged"
    if div.any():
        items.append(hv.Scatter((sw.lr.values[div], np.full(div.sum(), -0.05)), "learning rate",
                                "normalised value", label="diverged").opts(color="red", marker="x", size=10))
    ov = hv.Overlay(items) if items else hv.Overlay([hv.Curve([])])
    return ov.opts(hv.opts.Curve(logx=True), hv.opts.Scatter(logx=True)).opts(
        title="Metrics vs learning rate (normalised per metric)", legend_position="right")


def _lr_overlay(curves: list, title: str) -> hv.Overlay:
    return hv.Overlay(curves).opts(title=title, legend_position="right") if curves else hv.Overlay([hv.Curve([])])


def loss_ratio_trajectories(sw: xr.Dataset, window: int = 50) -> hv.Overlay:
    """Bias-conflicting share of the minibatch loss through training, per learning rate
    (seed mean, running mean over `window` iterations)."""
    if "loss_ratio" not in sw:
        return _lr_overlay([], "BC loss ratio (no probe)")
    lrs = lr_values(sw)
    curves = []
    for lr, c in zip(lrs, _palette(len(lrs))):
        sel = sw.loss_ratio.isel(run=np.flatnonzero(_ok(sw) & (sw.lr.values == lr))).mean("run")
        sm = sel.rolling(iteration=window, min_periods=1).mean()
        v = sm.values
        keep = np.isfinite(v)
        curves.append(hv.Curve((sm.iteration.values[keep], v[keep]), "iteration", "BC loss ratio",
                               label=f"lr={lr:g}").opts(color=c))
    return _lr_overlay(curves, "Bias-conflicting loss ratio through training")


def pruning_curves(sw: xr.Dataset, kind: str = "structured") -> hv.Overlay:
    """Unbiased test accuracy after pruning a fraction κ, per learning rate (Figs. 21–22)."""
    var = f"pruning_{kind}"
    if var not in sw:
        return _lr_overlay([], "pruning (no probe)")
    lrs = lr_values(sw)
    curves = []
    for lr, c in zip(lrs, _palette(len(lrs))):
        sel = sw[var].isel(run=np.flatnonzero(_ok(sw) & (sw.lr.values == lr))).mean("run")
        curves.append(hv.Curve((sel.kappa.values, sel.values), "κ (fraction pruned)", "accuracy",
                               label=f"lr={lr:g}").opts(color=c))
        curves.append(hv.Scatter((sel.kappa.values, sel.values), "κ (fraction pruned)", "accuracy",
                                 label=f"lr={lr:g}").opts(color=c, size=5))
    return _lr_overlay(curves, f"Pruning curves ({kind})")


def loss_ratio_vs_accuracy(sw: xr.Dataset) -> hv.Overlay:
    """Maximum bias-conflicting loss ratio against unbiased accuracy, one point per run, with
    Pearson's r in the title (Fig. 12)."""
    if "max_loss_ratio" not in sw or "unbiased_accuracy_final" not in sw:
        return _lr_overlay([], "max loss ratio (no probe)")
    ok = _ok(sw)
    x = sw.max_loss_ratio.values[ok].astype(float)
    y = sw.unbiased_accuracy_final.values[ok].astype(float)
    m = np.isfinite(x) & np.isfinite(y)
    r = float(np.corrcoef(x[m], y[m])[0, 1]) if m.sum() > 2 and np.std(x[m]) > 0 and np.std(y[m]) > 0 else float("nan")
    pts = hv.Points((x[m], y[m], np.log10(sw.lr.values[ok][m])), ["max BC loss ratio", "unbiased accuracy"],
                    "log10 lr").opts(color="log10 lr", cmap="viridis", size=8, colorbar=True)
    return hv.Overlay([pts]).opts(title=f"Max BC loss ratio vs unbiased accuracy (r = {r:.2f})")


def dynamics(sw: xr.Dataset, var: str = "unbiased_accuracy", label: str | None = None) -> hv.Overlay:
    """A per-snapshot metric through training, per learning rate (seed mean), Fig. 13 style."""
    if var not in sw:
        return _lr_overlay([], f"{var} (no probe)")
    lrs = lr_values(sw)
    curves = []
    for lr, c in zip(lrs, _palette(len(lrs))):
        runs = np.flatnonzero(_ok(sw) & (sw.lr.values == lr))
        it = sw.snapshot_iteration.isel(run=runs).max("run").values
        v = sw[var].isel(run=runs).mean("run").values
        keep = np.isfinite(v) & np.isfinite(it)
        curves.append(hv.Curve((it[keep] + 1, v[keep]), "iteration + 1", label or var, label=f"lr={lr:g}")
                      .opts(color=c, logx=True))
    return _lr_overlay(curves, f"{label or var} through training")


def neuron_survival(sw: xr.Dataset) -> hv.Layout:
    """Share of class-dominant (left) and bias-dominant (right) neurons at each snapshot that are
    still so at the end of training, per learning rate (supplement Fig. 18)."""
    return (dynamics(sw, "class_neuron_survival", "class-dominant survival")
            + dynamics(sw, "bias_neuron_survival", "bias-dominant survival")).cols(2)


def lorenz_curves(sw: xr.Dataset) -> hv.Overlay:
    """Lorenz curves of per-sample importance weights at the end of training, per learning
    rate, with the uniform diagonal (Springer et al. Fig. 5)."""
    if "importance_lorenz" not in sw:
        return _lr_overlay([], "Lorenz curves (no probe)")
    lrs = lr_values(sw)
    curves = [hv.Curve(([0, 1], [0, 1]), "fraction of samples (top first)", "share of importance",
                       label="uniform").opts(color="gray", line_dash="dashed")]
    for lr, c in zip(lrs, _palette(len(lrs))):
        sel = sw.importance_lorenz.isel(run=np.flatnonzero(_ok(sw) & (sw.lr.values == lr)), lorenz_at=-1)
        v = sel.mean("run")
        curves.append(hv.Curve((v.fraction.values, v.values), "fraction of samples (top first)",
                               "share of importance", label=f"lr={lr:g}").opts(color=c))
    return _lr_overlay(curves, "Lorenz curves of importance weights (end of training)")


def minmax_table(sw: xr.Dataset, metrics=HEADLINE) -> hv.Table:
    """Paper Tables 1–2: each metric at the smallest and the largest (non-diverged) learning rate."""
    lrs = lr_values(sw)
    rows = []
    ds_name = str(sw.dataset.values[0]) if "dataset" in sw.coords else "?"
    model = str(sw.model.values[0]) if "model" in sw.coords else "?"
    for var, label in metrics:
        if var not in sw or len(lrs) == 0:
            continue
        _, mean, std = per_lr(sw, var)
        rows.append((ds_name, model, label, f"{lrs[0]:g}", f"{lrs[-1]:g}", f"{mean[0]:.3f} ± {std[0]:.3f}",
                     f"{mean[-1]:.3f} ± {std[-1]:.3f}"))
    return hv.Table(rows, ["dataset", "model", "metric", "LR min", "LR max"], ["value at LR min", "value at LR max"])


KNOBS = ("lr", "batch_size", "momentum", "weight_decay", "l1", "focal_gamma", "sam_rho", "optimizer", "schedule",
         "step_at")


def knob_comparison(sw: xr.Dataset, metrics=(("unbiased_accuracy_final", "unbiased accuracy"),
                                              ("prunability", "prunability"), ("csi_mean_final", "average CSI"))
                    ) -> hv.Layout:
    """Rival hyperparameters (Fig. 6 / Table 2): one row per knob that varies in the sweep, its
    value on x and each metric (seed mean ± std over finished runs) on y."""
    ok = _ok(sw)
    rows = []
    for knob in KNOBS:
        if knob not in sw.coords or len(np.unique(sw[knob].values)) < 2:
            continue
        vals = np.unique(sw[knob].values[ok])
        for var, label in metrics:
            if var not in sw:
                continue
            m = [np.nanmean(sw[var].values[ok & (sw[knob].values == v)].astype(float)) for v in vals]
            s = [np.nanstd(sw[var].values[ok & (sw[knob].values == v)].astype(float)) for v in vals]
            numeric = np.issubdtype(np.asarray(vals).dtype, np.number)
            xs = vals if numeric else np.arange(len(vals))
            c = hv.Curve((xs, m), knob, label) * hv.ErrorBars((xs, m, s), knob, [label, "std"])
            c = c * hv.Scatter((xs, m), knob, label).opts(size=6)
            rows.append(c.opts(title=f"{label} vs {knob}"))
    if not rows:
        return hv.Layout([hv.Curve([]).opts(title="no varying knob")])
    return hv.Layout(rows).cols(len(metrics))


def attribution_grid(sw: xr.Dataset, *, low_lr: float | None = None, high_lr: float | None = None,
                     n: int = 6, method: str = "integrated_gradients") -> hv.Layout:
    """Fig. 8: probe samples that high-LR runs get right and low-LR runs get wrong; for each, the
    input and the attribution maps of one low-LR and one high-LR run (|attribution|, normalised)."""
    import torch

    from ..probe.attribution import attributions
    from ..probe.sweep import lr_sensitive_samples
    from ..train.data import as_model_input
    from ..train.restore import load_model

    lrs = lr_values(sw)
    if len(lrs) < 2:
        return hv.Layout([hv.Curve([]).opts(title="attribution grid needs two learning rates")])
    low_lr = lrs[0] if low_lr is None else low_lr
    high_lr = lrs[-1] if high_lr is None else high_lr
    try:
        sel = lr_sensitive_samples(sw, low_lrs=[low_lr], high_lrs=[high_lr])
        picks = np.flatnonzero(sel.selected.values)
    except Exception:
        picks = np.array([], dtype=int)
    if len(picks) == 0:  # fall back to the samples the high-LR runs gain most on
        gain = (sel.high_lr_correct - sel.low_lr_correct).values if "sel" in locals() else None
        picks = np.argsort(-gain)[:n] if gain is not None else np.arange(n)
    picks = picks[:n]
    ok = _ok(sw)
    stores = sw.attrs["stores"]
    run_lo = int(np.flatnonzero(ok & (sw.lr.values == low_lr))[0])
    run_hi = int(np.flatnonzero(ok & (sw.lr.values == high_lr))[0])
    inputs = sw.probe_inputs.isel(run=run_hi) if "run" in sw.probe_inputs.dims else sw.probe_inputs
    x_raw = torch.from_numpy(np.asarray(inputs.isel(probe_sample=picks).values))
    x = as_model_input(x_raw)
    y = torch.from_numpy(sw.probe_y.values[picks])
    maps = {lbl: np.abs(attributions(load_model(stores[r]), x, y, method=method).values)
            for lbl, r in ((f"lr={low_lr:g}", run_lo), (f"lr={high_lr:g}", run_hi))}

    def to_img(a):
        a = np.asarray(a, dtype=float)
        if a.ndim == 1:
            return a[None, :]
        if a.ndim == 3:
            return a.mean(0) if a.shape[0] in (1, 3) else a[0]
        return a

    def image(a):
        a = np.ascontiguousarray(a[::-1])
        return hv.Image(a, bounds=(0, 0, a.shape[1], a.shape[0]))

    panels = []
    for i in range(len(picks)):
        panels.append(image(to_img(x[i].numpy())).opts(
            title=f"sample {picks[i]} (y={int(y[i])})", cmap="gray", xaxis=None, yaxis=None))
        for lbl, m in maps.items():
            img = to_img(m[i])
            img = img / img.max() if img.max() > 0 else img
            panels.append(image(img).opts(title=lbl, cmap="magma", xaxis=None, yaxis=None))
    return hv.Layout(panels).cols(3).opts(title=f"{method} attributions: low vs high LR")


def has_rival_knobs(sw: xr.Dataset) -> bool:
    """Whether a knob other than the LR varies in the sweep (the rival-knobs figure has rows)."""
    return any(k != "lr" and k in sw.coords and len(set(sw[k].values.tolist())) > 1 for k in KNOBS)


@dataclass(frozen=True)
class FigureEntry:
    """One figure kind: `build` takes the sweep Dataset and returns a HoloViews object (a Table is
    written as an HTML table); the report draws it under `title` where `applies` holds (always
    when None), `lrprobe figures` writes it as `name`. Called, an entry builds."""

    name: str
    build: Callable[[xr.Dataset], Any]
    title: str
    applies: Callable[[xr.Dataset], bool] | None = None

    def __call__(self, sw: xr.Dataset):
        return self.build(sw)


# in the report's order
FIGURES: dict[str, FigureEntry] = {e.name: e for e in [
    FigureEntry("metrics_vs_lr", metrics_vs_lr, "Metrics vs learning rate (Figs. 3–5)"),
    FigureEntry("knob_comparison", knob_comparison, "Rival knobs (Fig. 6, Table 2)", applies=has_rival_knobs),
    FigureEntry("pruning_curves", pruning_curves, "Pruning curves (Figs. 21–22)"),
    FigureEntry("loss_ratio_trajectories", loss_ratio_trajectories, "Bias-conflicting loss ratio (Fig. 12, left)"),
    FigureEntry("loss_ratio_vs_accuracy", loss_ratio_vs_accuracy, "Max BC loss ratio vs unbiased accuracy (Fig. 12)"),
    FigureEntry("dynamics_accuracy", lambda sw: dynamics(sw, "probe_accuracy", "unbiased accuracy (probe subset)"),
                "Unbiased accuracy through training (Fig. 13)"),
    FigureEntry("dynamics_csi", lambda sw: dynamics(sw, "csi_mean", "average CSI"),
                "Average CSI through training (Fig. 13)"),
    FigureEntry("neuron_survival", neuron_survival, "Neuron survival (Fig. 18)"),
    FigureEntry("lorenz_curves", lorenz_curves, "Importance weights (Springer et al. Fig. 5)"),
    FigureEntry("attribution_grid", attribution_grid, "Attributions, low vs high learning rate (Fig. 8)"),
    FigureEntry("minmax_table", minmax_table, "Min/max table (Tables 1–2)"),
]}
