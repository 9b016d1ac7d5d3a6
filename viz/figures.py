"""HoloViews figure builders, one per paper figure kind. Each takes the sweep Dataset from
``lrscope.open_sweep`` (with probes) and returns a HoloViews object that displays in Jupyter,
renders to bokeh for the HTML report, and to matplotlib for static figures."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import holoviews as hv
import holoviews.plotting.bokeh  # noqa: F401  (registers the bokeh backend: builders' options need one)
import numpy as np
import xarray as xr
from bokeh.palettes import Viridis256

from ..probe.registry import headlines
from ..store import schema as S

HEADLINE = [(h.var, h.label) for h in headlines()]  # each declared with its probe (probe/registry.py)
# The figures' seed means, trends and picks take the *completed* runs only: a diverged run has
# finished training (schema.FINISHED), but its numbers are those of a network that blew up, so it
# is drawn apart (a red x, its own colour) and enters no mean.
COMPLETED = (S.STATUS_COMPLETED,)


def _palette(n: int) -> list[str]:
    if n <= 1:
        return [Viridis256[0]]
    return [Viridis256[int(i * 230 / (n - 1))] for i in range(n)]


def _ok(sw: xr.Dataset) -> np.ndarray:
    """Which runs of `sw` completed (`COMPLETED`)."""
    return np.isin(sw.status.values, COMPLETED)


def lr_values(sw: xr.Dataset) -> np.ndarray:
    return np.unique(sw.lr.values[_ok(sw)])


def per_lr(sw: xr.Dataset, var: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seed mean and standard deviation of a per-run scalar at each learning rate (completed runs)."""
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
    return _lr_overlay(curves, f"{label or var} through training").opts(responsive=True, min_width=420, height=300)


def subnetwork_gradients(sw: xr.Dataset) -> hv.Layout:
    """Proposition 2 through training, as stated (the `prop2_gradients` probe): the spurious / core
    subnetwork gradient-norm ratio over each checkpoint's training minibatch, all of it and its
    bias-conflicting samples, and the minibatch's logit norm, per learning rate (seed means; log
    scale). Without that probe, the head-column ratio on the probe subset, titled as such."""
    panels = []
    if "prop2_grad_ratio" in sw:
        it = sw.prop2_iteration
        for var, label in (("prop2_grad_ratio", "Σ‖∇s ℓ‖ / Σ‖∇c ℓ‖, minibatch"),
                           ("prop2_grad_ratio_bc", "Σ‖∇s ℓ‖ / Σ‖∇c ℓ‖, BC samples")):
            if var in sw:
                panels.append(_per_lr_curves(sw, sw[var], it, label).opts(
                    hv.opts.Curve(logy=True), hv.opts.Scatter(logy=True)))
        zn = sw.prop2_logit_norm.mean("minibatch_part")
        panels.append(_per_lr_curves(sw, zn, it, "mean logit norm ‖z‖, minibatch"))
    else:
        for var, label in (("head_column_grad_ratio", "head-column gradient norm ratio (probe subset)"),
                           ("head_column_grad_ratio_bc", "head-column gradient norm ratio (BC probe samples)")):
            if var in sw:
                panels.append(dynamics(sw, var, label).opts(hv.opts.Curve(logy=True)))
    return hv.Layout(panels).cols(2) if panels else hv.Layout([hv.Curve([]).opts(title="no prop2_gradients")])


def _per_lr_curves(sw: xr.Dataset, v: xr.DataArray, it: xr.DataArray, label: str):
    """`v` (run, ·) against the iterations `it` (run, ·), seed means per learning rate."""
    lrs = lr_values(sw)
    curves = []
    for lr, c in zip(lrs, _palette(len(lrs))):
        runs = np.flatnonzero(_ok(sw) & (sw.lr.values == lr))
        x = (it.isel(run=runs).max("run") if "run" in it.dims else it).values  # shared by the runs: no run dim
        y = v.isel(run=runs).mean("run").values
        keep = np.isfinite(y) & np.isfinite(x) & (y > 0)
        pts = (x[keep] + 1, y[keep])
        curves.append(hv.Curve(pts, "iteration + 1", label, label=f"lr={lr:g}").opts(color=c, logx=True))
        curves.append(hv.Scatter(pts, "iteration + 1", label).opts(color=c, logx=True, size=6))  # the checkpoints
    return _lr_overlay(curves, f"{label} (at checkpoints)").opts(responsive=True, min_width=420, height=300)


def neuron_resets(sw: xr.Dataset, n: int = 4) -> hv.Layout:
    """Supplement Fig. 18 (bottom), for one run at the highest learning rate: the spurious share
    of the most bias-selective neurons' attributions through training (lines) above the update
    norm of each neuron's incoming weights between checkpoints (bars); resets marked."""
    none = hv.Layout([hv.Curve([]).opts(title="no neuron_resets results")])
    if "neuron_spurious_share" not in sw:
        return none
    done = [i for i in np.flatnonzero(_ok(sw)) if np.isfinite(sw.neuron_spurious_share.isel(run=i).values).any()]
    if not done:
        return none
    # the highest LR among runs with at least 4 examined checkpoints (else the run with the most)
    n_ck = {i: int(np.isfinite(sw.reset_iteration.isel(run=i).values).sum()) for i in done}
    dense = [i for i in done if n_ck[i] >= 4]
    run = max(dense, key=lambda i: float(sw.lr.values[i])) if dense else max(done, key=lambda i: n_ck[i])
    r = sw.isel(run=run)
    it = r.reset_iteration.values
    keep = np.isfinite(it)
    lines, bars = [], []
    k = min(n, r.sizes["reset_neuron"])
    for j, c in zip(range(k), _palette(k)):
        name = f"neuron {int(r.reset_neuron_index.values[j])}"
        share = r.neuron_spurious_share.isel(reset_neuron=j).values
        lines.append(hv.Curve((it[keep], share[keep]), "iteration", "spurious share", label=name).opts(color=c))
        rs = r.neuron_resets.isel(reset_neuron=j).values.astype(bool) & keep
        if rs.any():
            lines.append(hv.Scatter((it[rs], share[rs]), "iteration", "spurious share").opts(
                color=c, marker="inverted_triangle", size=11))
        upd = r.neuron_update_norm.isel(reset_neuron=j).values
        bars.append(hv.Curve((it[keep], upd[keep]), "iteration", "update norm", label=name).opts(
            color=c, interpolation="steps-pre"))
    top = hv.Overlay(lines).opts(title=f"spurious attribution share per neuron (lr={float(r.lr):g}; ▼ reset)",
                                 legend_position="right", responsive=True, min_width=420, height=260)
    bottom = hv.Overlay(bars).opts(title="update norm of the neuron's incoming weights since the previous checkpoint",
                                   legend_position="right", responsive=True, min_width=420, height=200)
    return (top + bottom).cols(1)


def neuron_survival(sw: xr.Dataset) -> hv.Layout:
    """Share of class-dominant (left) and bias-dominant (right) neurons at each snapshot that are
    still so at the end of training, per learning rate (supplement Fig. 18)."""
    return (dynamics(sw, "class_neuron_survival", "class-dominant survival")
            + dynamics(sw, "bias_neuron_survival", "bias-dominant survival")).cols(2)


def lorenz_curves(sw: xr.Dataset) -> hv.Overlay:
    """Lorenz curves of per-sample importance weights at the end of training, from the train
    logits of the last snapshot that has them, per learning rate, with the uniform diagonal
    (Springer et al. Fig. 5; the per-epoch ones: `importance_trajectories`)."""
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


def _runs_at(sw: xr.Dataset, lr: float) -> np.ndarray:
    return np.flatnonzero(_ok(sw) & (sw.lr.values == lr))


def importance_trajectories(sw: xr.Dataset) -> hv.Layout:
    """Importance weights 1 − p(y|x) through training, from the minibatch log (the importance
    probe's per-epoch values; Springer et al. Fig. 5 as a trajectory), per learning rate (seed
    mean): their Gini coefficient per epoch, the bias-conflicting samples' share of the total,
    and Lorenz curves at the first epoch (dashed) and the last complete one (solid) beside the
    uniform diagonal. Epochs in which fewer than half the training samples were weighted (a run's
    last partial epoch) are left out. Probe results from before the per-epoch values: the Lorenz
    curves of the snapshot train logits (`lorenz_curves`)."""
    if "importance_epoch_gini" not in sw:
        return hv.Layout([lorenz_curves(sw)])
    lrs = lr_values(sw)
    n_train = sw.sizes["train_sample"]
    full = sw.importance_epoch_samples.sel(subset="all") >= n_train / 2
    size = dict(responsive=True, min_width=300, height=280, legend_position="right")
    gini, share, lorenz = [], [], [hv.Curve(([0, 1], [0, 1]), "fraction of samples (top first)", "share of importance",
                                            label="uniform").opts(color="gray", line_dash="dotted")]
    has_bc = bool(np.asarray(sw.train_bias_conflicting.values).any())
    for lr, c in zip(lrs, _palette(len(lrs))):
        runs = _runs_at(sw, lr)
        if not len(runs):
            continue
        g = sw.importance_epoch_gini.sel(subset="all").where(full).isel(run=runs).mean("run")
        keep = np.isfinite(g.values)
        gini.append(hv.Curve((g.epoch.values[keep] + 1, g.values[keep]), "epoch", "Gini of importance weights",
                             label=f"lr={lr:g}").opts(color=c, tools=["hover"]))
        if has_bc:
            b = sw.importance_epoch_bc_share.where(full).isel(run=runs).mean("run")
            keep = np.isfinite(b.values)
            share.append(hv.Curve((b.epoch.values[keep] + 1, b.values[keep]), "epoch",
                                  "bias-conflicting share of importance", label=f"lr={lr:g}").opts(color=c))
        lz = sw.importance_epoch_lorenz.isel(run=runs)
        for at, dash, word in ((0, "dashed", "first epoch"), (-1, "solid", "last epoch")):
            v = lz.isel(lorenz_epoch_at=at).mean("run")
            if np.isfinite(v.values).any():
                lorenz.append(hv.Curve((v.fraction.values, v.values), "fraction of samples (top first)",
                                       "share of importance", label=f"lr={lr:g}, {word}").opts(color=c,
                                                                                              line_dash=dash))
    panels = [_lr_overlay(gini, "Gini of the importance weights per epoch (0: uniform)").opts(**size),
              _lr_overlay(lorenz, "Lorenz curves, first and last complete epoch").opts(**size)]
    if share:
        panels.append(_lr_overlay(share, "Bias-conflicting share of the importance").opts(**size))
    return hv.Layout(panels).cols(2)


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
    value on x and each metric (seed mean ± std over completed runs) on y."""
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


LANDSCAPE = (("train_loss_final", "final training loss", "log10"), ("unbiased_accuracy_final", "unbiased accuracy", ""),
             ("bsi_mean_final", "spurious feature utilisation (average BSI)", ""))


def _landscape_knobs(sw: xr.Dataset) -> tuple[str, str] | None:
    """The two knobs of a 2-D grid: the LR and the first other numeric knob that varies."""
    varying = [k for k in KNOBS if k in sw.coords and len(np.unique(sw[k].values[_ok(sw)])) >= 2
               and np.issubdtype(sw[k].dtype, np.number)]
    if "lr" not in varying or len(varying) < 2:
        return None
    return "lr", next(k for k in varying if k != "lr")


def landscape(sw: xr.Dataset, metrics=LANDSCAPE) -> hv.Layout:
    """Fig. 9: training-loss, unbiased-accuracy and spurious-utilisation landscapes over two knobs
    (the LR and another that varies: focal γ in the paper), one heatmap per metric, each cell
    the seed mean of the completed runs (hover: value and runs). Axes are the knobs' values in
    order (evenly spaced)."""
    knobs = _landscape_knobs(sw)
    if knobs is None:
        return hv.Layout([hv.Curve([]).opts(title="not a 2-D grid: the LR and a second knob must both vary")])
    kx, ky = knobs
    ok = _ok(sw)
    xs, ys = np.unique(sw[kx].values[ok]), np.unique(sw[ky].values[ok])
    panels = []
    for var, label, scale in metrics:
        if var not in sw:
            continue
        vals = sw[var].values.astype(float)
        cells = []
        for x in xs:
            for y in ys:
                m = ok & (sw[kx].values == x) & (sw[ky].values == y)
                v = vals[m]
                mean = float(np.nanmean(v)) if np.isfinite(v).any() else np.nan
                if scale == "log10":
                    mean = float(np.log10(mean)) if mean > 0 else np.nan
                cells.append((f"{x:g}", f"{y:g}", mean, int(np.isfinite(v).sum())))
        shown = f"log10 {label}" if scale == "log10" else label
        panels.append(hv.HeatMap(cells, [kx, ky], [shown, "runs"]).opts(
            cmap="viridis", colorbar=True, tools=["hover"], title=shown, responsive=True, min_width=300,
            height=300, xlabel="learning rate" if kx == "lr" else kx, ylabel=ky.replace("_", " ")))
    return hv.Layout(panels).cols(3) if panels else hv.Layout([hv.Curve([]).opts(title="no probe results")])


def is_2d_grid(sw: xr.Dataset) -> bool:
    return _landscape_knobs(sw) is not None


def attribution_shares(sw: xr.Dataset, method: str = "ig") -> hv.Layout:
    """Attribution shares per input region (core / spurious / noise) against the LR, at each run's
    last attributed checkpoint: the raw share of the absolute attribution mass (a region of many
    inputs gets much by count: parity's 30 noise bits) and the size-normalised share (mass per
    input, the regions' values summing to 1), side by side, seed mean ± sd."""
    names = [str(r) for r in sw.region.values] if "region" in sw.coords else []
    panels = []
    for suffix, title in (("share", "raw share of attribution mass"),
                          ("share_per_input", "size-normalised share (mass per input)")):
        items = []
        for name, c in zip(names, _palette(len(names))):
            var = f"{method}_{name}_{suffix}"
            if var not in sw or "attr_checkpoint" not in sw[var].dims:
                continue
            tmp = xr.Dataset({"v": sw[var].isel(attr_checkpoint=-1)}, coords={"lr": sw.lr, "status": sw.status})
            lrs, mean, sd = per_lr(tmp, "v")
            items += [hv.Curve((lrs, mean), "learning rate", "share", label=name).opts(color=c),
                      hv.ErrorBars((lrs, mean, sd), "learning rate", ["share", "sd"]).opts(color=c),
                      hv.Scatter((lrs, mean), "learning rate", "share", label=name).opts(color=c, size=6)]
        if items:
            panels.append(hv.Overlay(items).opts(
                hv.opts.Curve(logx=True), hv.opts.Scatter(logx=True)).opts(
                title=f"{'Integrated Gradients' if method == 'ig' else 'DeepLift'}: {title}", legend_position="right",
                responsive=True, min_width=380, height=300, ylim=(0, None)))
    return hv.Layout(panels).cols(2) if panels else hv.Layout([hv.Curve([]).opts(title="no attribution shares")])


def _run_at(sw: xr.Dataset, lr: float) -> int:
    """The first completed run at a learning rate (lowest seed)."""
    return int(np.flatnonzero(_ok(sw) & (sw.lr.values == lr))[0])


def attribution_grid(sw: xr.Dataset, *, low_lr: float | None = None, high_lr: float | None = None,
                     n: int = 8) -> hv.Layout:
    """Fig. 8 from the store: the attribution maps the `attributions` probe stored (samples taken
    in turn from every (y, b) group, at the last attributed checkpoint) for one run at the lowest
    and one at the highest learning rate, Integrated Gradients and DeepLift side by side. Vector
    inputs (parity) are strips, one row per sample labelled with y, b and whether it is
    bias-conflicting, the core / spurious / noise regions marked; images are small multiples.
    Nothing is recomputed: the maps are read from the stores."""
    from ..store.reader import read_probe

    lrs = lr_values(sw)
    if len(lrs) == 0:
        return hv.Layout([hv.Curve([]).opts(title="no completed run")])
    picks = [lrs[0] if low_lr is None else low_lr] + ([lrs[-1] if high_lr is None else high_lr] if len(lrs) > 1 else [])
    stores = sw.attrs["stores"]
    panels = []
    for lr in picks:
        run = _run_at(sw, lr)
        try:
            res = read_probe(stores[run], "attributions")
        except Exception:
            res = None
        if res is None or "ig_maps" not in res:
            panels.append(hv.Curve([]).opts(title=f"lr={lr:g}: no stored attribution maps (lrprobe compute)"))
            continue
        for var, method in (("ig_maps", "Integrated Gradients"), ("deeplift_maps", "DeepLift")):
            if var in res:
                panels.append(_maps_panel(res, var, f"{method}, lr={lr:g}", n, sw))
    return hv.Layout(panels).cols(2).opts(title="attributions at the last attributed checkpoint: low vs high LR")


def _maps_panel(res: xr.Dataset, var: str, title: str, n: int, sw: xr.Dataset):
    m = np.asarray(res[var].values, dtype=float)[:n]
    y = res.map_y.values[:n] if "map_y" in res.coords else np.full(len(m), -1)
    b = res.map_b.values[:n] if "map_b" in res.coords else np.full(len(m), -1)
    rows = [f"{i}: y={yy} b={bb}{' BC' if yy != bb else ''}" for i, (yy, bb) in enumerate(zip(y, b))]
    if m.ndim == 2:  # vector inputs: one strip per sample
        lim = float(np.abs(m).max()) or 1.0
        heat = hv.HeatMap([(j, rows[i], float(m[i, j])) for i in range(len(m)) for j in range(m.shape[1])],
                          ["input", "sample"], "attribution").opts(
            cmap="RdBu_r", clim=(-lim, lim), colorbar=True, tools=["hover"], title=title, xrotation=0,
            invert_yaxis=True, responsive=True, min_width=380, height=40 + 28 * len(m))
        marks, spans = [], []
        if "regions" in sw:
            regs = np.asarray(sw.regions.values)
            regs = regs[0] if regs.ndim == 3 else regs
            for k, name in enumerate(sw.region.values):
                on = np.flatnonzero(regs[k])
                if len(on):
                    marks.append(hv.VLine(on[-1] + 0.5).opts(color="black", line_width=2))
                    spans.append(f"{name} {on[0]}–{on[-1]}" if len(on) > 1 else f"{name} {on[0]}")
        return hv.Overlay([heat, *marks]).opts(title=title + (f" (inputs: {', '.join(spans)})" if spans else ""))
    imgs = []
    for i in range(len(m)):
        a = m[i]
        a = a.mean(0) if a.ndim == 3 else a
        a = np.ascontiguousarray(np.abs(a)[::-1])
        a = a / a.max() if a.max() > 0 else a
        imgs.append(hv.Image(a, bounds=(0, 0, a.shape[1], a.shape[0])).opts(
            title=rows[i], cmap="magma", xaxis=None, yaxis=None, width=140, height=140))
    return hv.Layout(imgs).cols(4).opts(title=title)


def metric_panels(sw: xr.Dataset, metrics=HEADLINE) -> hv.Layout:
    """Each headline metric on its own scale against the LR: every run a point (hover: run id,
    seed, status), the seed mean as a line and ± one standard deviation as a band."""
    panels = [metric_panel(sw, var, label).opts(min_width=300, height=260) for var, label in metrics
              if var in sw and sw[var].dims == ("run",)]
    return hv.Layout(panels).cols(3) if panels else hv.Layout([hv.Curve([]).opts(title="no probe results")])


STATUS_COLORS = {"completed": "#1f77b4", "diverged": "#d62728", "running": "#999999", "failed": "#000000"}


def metric_panel(sw: xr.Dataset, var: str, label: str | None = None) -> hv.Overlay:
    """One per-run scalar against the LR on its own scale: every run a point coloured by its
    status (hover: run id, seed, status), the seed mean of the completed runs as a line and ± one
    standard deviation as a band (`per_lr`). The report's `metric_panels` and the explorer's
    metric plot."""
    label = label or str(sw[var].attrs.get("long_name", var))
    ids = sw.run_id.values if "run_id" in sw.coords else sw.run.values
    seeds = sw.seed.values if "seed" in sw.coords else np.zeros(sw.sizes["run"], int)
    vals = sw[var].values.astype(float)
    pts = hv.Points({"lr": sw.lr.values, label: vals, "run": ids.astype(str), "seed": seeds,
                     "status": sw.status.values.astype(str)}, ["lr", label], ["run", "seed", "status"]).opts(
        color="status", cmap=STATUS_COLORS, size=7, tools=["hover"], logx=True, show_legend=False)
    lrs, mean, sd = per_lr(sw, var)
    band = hv.Spread((lrs, mean, sd), "lr", [label, "sd"]).opts(fill_alpha=0.2, color="grey")
    line = hv.Curve((lrs, mean), "lr", label).opts(color="black")
    return (band * line * pts).opts(title=label, logx=True, responsive=True, xlabel="learning rate", padding=0.08)


def group_accuracy_vs_lr(sw: xr.Dataset) -> hv.Overlay:
    """Accuracy of every (y, b) group at the end of training against the LR (seed mean), beside the
    unbiased (the groups' mean) and worst-group accuracy; bias-conflicting groups dashed."""
    from ..probe.sweep import last_snapshot

    if "group_accuracy" not in sw:
        return _lr_overlay([], "per-group accuracy (no accuracy probe)")
    ga = last_snapshot(sw["group_accuracy"])  # (run, group)
    ok = _ok(sw)
    lrs = lr_values(sw)
    curves = []
    labels = sw.group_label.values if "group_label" in sw.coords else [str(g) for g in sw.group.values]
    for k, lbl in enumerate(labels):
        vals = ga.isel(group=k).values.astype(float)
        mean = [np.nanmean(vals[ok & (sw.lr.values == lr)]) for lr in lrs]
        parts = str(lbl).replace("y=", "").replace("b=", "").split(",")
        bc = len(parts) == 2 and parts[0] != parts[1]
        curves.append(hv.Curve((lrs, mean), "lr", "accuracy", label=f"group {lbl}").opts(
            line_dash="dashed" if bc else "solid", tools=["hover"]))
    for var, label in (("unbiased_accuracy_final", "unbiased"), ("worst_group_accuracy_final", "worst group")):
        if var in sw:
            _, mean, _ = per_lr(sw, var)
            curves.append(hv.Curve((lrs, mean), "lr", "accuracy", label=label).opts(line_width=3, tools=["hover"]))
    return hv.Overlay(curves).opts(title="accuracy per (y, b) group at the end of training (dashed: bias-conflicting)",
                                   logx=True, legend_position="right", xlabel="learning rate")


def block_mean(x: np.ndarray, n: int = 600) -> tuple[np.ndarray, np.ndarray]:
    """(iteration, value) with at most `n` points: means of consecutive blocks (NaN-aware; an
    all-NaN block is NaN, quietly). Shared by the report's and the explorer's training curves."""
    it = np.arange(len(x))
    if len(x) <= n:
        return it, x
    k = -(-len(x) // n)
    m = len(x) // k * k
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return it[:m].reshape(-1, k).mean(1), np.nanmean(x[:m].reshape(-1, k), axis=1)


def training_curves(sw: xr.Dataset, variables=(("loss", "training loss"), ("accuracy", "minibatch accuracy"),
                                               ("grad_norm", "gradient norm"))) -> hv.Layout:
    """The per-step log through training, per learning rate (seed mean, in blocks of steps)."""
    lrs = lr_values(sw)
    panels = []
    for var, label in variables:
        if var not in sw or "iteration" not in sw[var].dims:
            continue
        curves = []
        for lr, c in zip(lrs, _palette(len(lrs))):
            runs = np.flatnonzero(_ok(sw) & (sw.lr.values == lr))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                v = np.nanmean(np.asarray(sw[var].isel(run=runs).values, dtype=float), axis=0)
            keep = np.flatnonzero(np.isfinite(v))
            if len(keep) == 0:
                continue
            it, m = block_mean(v[: keep[-1] + 1])
            curves.append(hv.Curve((it, m), "iteration", label, label=f"lr={lr:g}").opts(color=c, tools=["hover"]))
        logy = var in ("loss", "grad_norm")
        panels.append(_lr_overlay(curves, f"{label} through training").opts(logy=logy))
    return hv.Layout(panels).cols(3) if panels else hv.Layout([hv.Curve([]).opts(title="no log")])


def representation_dynamics(sw: xr.Dataset) -> hv.Layout:
    """The representation through training, per LR (seed mean): selectivity, class separation,
    activation compressibility and the linear probes' errors (Figs. 13, 15–16 style)."""
    views = [("probe_accuracy", "unbiased accuracy (probe subset)"), ("csi_mean", "average CSI"),
             ("bsi_mean", "average BSI"), ("class_separation", "class separation R²"),
             ("activation_compressibility", "activation compressibility"),
             ("core_probe_error", "linear probe error, class label"),
             ("spurious_probe_error", "linear probe error, bias label")]
    panels = [dynamics(sw, var, label).opts(min_width=300) for var, label in views if var in sw]
    return hv.Layout(panels).cols(3) if panels else hv.Layout([hv.Curve([]).opts(title="no probe results")])


def data_maps(sw: xr.Dataset, max_points: int = 4000) -> hv.Layout:
    """Dataset Cartography per LR (the `dynamics` probe, one run per LR: its lowest seed):
    confidence against variability of every training sample, bias-aligned and bias-conflicting
    apart (at most `max_points` drawn per map, the bias-conflicting ones always)."""
    if "dyn_confidence" not in sw:
        return hv.Layout([hv.Curve([]).opts(title="no dynamics probe (lrprobe compute)")])
    panels = []
    bc_all = sw.train_bias_conflicting.values.astype(bool)
    bc_all = bc_all[0] if bc_all.ndim == 2 else bc_all
    rng = np.random.default_rng(0)
    keep = np.flatnonzero(bc_all)
    rest = np.flatnonzero(~bc_all)
    if len(keep) + len(rest) > max_points:
        rest = np.sort(rng.choice(rest, max(0, max_points - len(keep)), replace=False))
    idx = np.sort(np.concatenate([keep, rest]))
    for lr in lr_values(sw):
        r = _run_at(sw, lr)
        conf = sw.dyn_confidence.isel(run=r).values[idx]
        var = sw.dyn_variability.isel(run=r).values[idx]
        kind = np.where(bc_all[idx], "bias-conflicting", "bias-aligned")
        pts = hv.Points({"variability": var, "confidence": conf, "kind": kind, "sample": idx},
                        ["variability", "confidence"], ["kind", "sample"]).opts(
            color="kind", cmap={"bias-aligned": "#3a7dbf", "bias-conflicting": "#e0542c"}, size=3, alpha=0.5,
            tools=["hover"], title=f"lr={lr:g}", responsive=True, min_width=260, height=260, xlim=(0, 0.5),
            ylim=(0, 1), show_legend=len(panels) == 0)
        panels.append(pts)
    return hv.Layout(panels).cols(3) if panels else hv.Layout([hv.Curve([]).opts(title="no completed run")])


def dynamics_summary(sw: xr.Dataset) -> hv.Layout:
    """Per-sample dynamics summarised against the LR (seed mean), bias-aligned vs bias-conflicting:
    mean confidence, mean forgetting events, share never learned, median iteration first learned."""
    views = [("confidence", "mean confidence"), ("forgetting_events", "mean forgetting events"),
             ("never_learned", "share never learned"), ("first_learned_median", "median iteration first learned")]
    lrs = lr_values(sw)
    panels = []
    for key, label in views:
        var = f"dyn_subset_{key}"
        if var not in sw or "subset" not in sw[var].dims:
            continue
        curves = []
        for sub, color in (("bias_aligned", "#3a7dbf"), ("bias_conflicting", "#e0542c")):
            vals = sw[var].sel(subset=sub).values.astype(float)
            mean = [np.nanmean(vals[_ok(sw) & (sw.lr.values == lr)]) for lr in lrs]
            curves.append(hv.Curve((lrs, mean), "lr", label, label=sub.replace("_", "-")).opts(
                color=color, tools=["hover"]) * hv.Scatter((lrs, mean), "lr", label).opts(color=color, size=6))
        panels.append(hv.Overlay(curves).opts(title=label, logx=True, xlabel="learning rate", responsive=True,
                                              min_width=300, height=260, legend_position="top_left"))
    return hv.Layout(panels).cols(2) if panels else hv.Layout([hv.Curve([]).opts(title="no dynamics probe")])


def background_share(sw: xr.Dataset) -> hv.Layout:
    """Fig. 10's two attribution measures against the LR, at each run's last attributed checkpoint,
    seed mean ± sd, Integrated Gradients and DeepLift as two lines: the background attribution
    share (share of |attribution| on the pixels a DeepLabV3 segmenter calls background; the
    paper's "background attribution percentage" as a fraction) and the normalised attribution
    entropy."""
    panels = []
    for suffix, title in (("background_share", "background attribution share"),
                          ("entropy", "normalised attribution entropy")):
        items = []
        for (m, label), c in zip((("ig", "Integrated Gradients"), ("deeplift", "DeepLift")), _palette(2)):
            var = f"{m}_{suffix}"
            if var not in sw or "attr_checkpoint" not in sw[var].dims:
                continue
            tmp = xr.Dataset({"v": sw[var].isel(attr_checkpoint=-1)}, coords={"lr": sw.lr, "status": sw.status})
            lrs, mean, sd = per_lr(tmp, "v")
            items += [hv.Curve((lrs, mean), "learning rate", suffix, label=label).opts(color=c),
                      hv.ErrorBars((lrs, mean, sd), "learning rate", [suffix, "sd"]).opts(color=c),
                      hv.Scatter((lrs, mean), "learning rate", suffix, label=label).opts(color=c, size=6)]
        if items:
            panels.append(hv.Overlay(items).opts(hv.opts.Curve(logx=True), hv.opts.Scatter(logx=True)).opts(
                title=title, legend_position="right", responsive=True, min_width=380, height=300))
    return hv.Layout(panels).cols(2) if panels else hv.Layout([hv.Curve([]).opts(title="no background share")])


def has_background_share(sw: xr.Dataset) -> bool:
    """Whether the sweep has two or more LRs and the segmenter's background share (--segmenter-weights)."""
    return several_lrs(sw) and any(v in sw for v in ("ig_background_share", "deeplift_background_share"))


def several_lrs(sw: xr.Dataset) -> bool:
    """Whether the sweep has two or more learning rates (figures against the LR need them)."""
    return len(lr_values(sw)) > 1


def has_rival_knobs(sw: xr.Dataset) -> bool:
    """Whether a knob other than the LR varies in the sweep (the rival-knobs figure has rows)."""
    return any(k != "lr" and k in sw.coords and len(set(sw[k].values.tolist())) > 1 for k in KNOBS)


@dataclass(frozen=True)
class FigureEntry:
    """One figure kind: `build` takes the sweep Dataset and returns a HoloViews object (a Table is
    written as an HTML table); the report draws it under `title`, in its `section`, where
    `applies` holds (always when None), `lrprobe figures` writes it as `name`. Called, an entry
    builds."""

    name: str
    build: Callable[[xr.Dataset], Any]
    title: str
    applies: Callable[[xr.Dataset], bool] | None = None
    section: str = "Against the learning rate"

    def __call__(self, sw: xr.Dataset):
        return self.build(sw)


_LR = "Against the learning rate"
_TRAIN = "Through training"
_SAMPLES = "Per-sample dynamics"
_PRUNE = "Pruning and the loss"
_ATTR = "Attributions"
# in the report's order (sections in the order they first appear)
FIGURES: dict[str, FigureEntry] = {e.name: e for e in [
    FigureEntry("metrics_vs_lr", metrics_vs_lr, "Headline metrics against the LR, normalised to [0, 1] (Figs. 3–5)",
                applies=several_lrs),
    FigureEntry("metric_panels", metric_panels, "Each metric on its own scale: every run, seed mean ± sd",
                applies=several_lrs),
    FigureEntry("group_accuracy", group_accuracy_vs_lr, "Accuracy per (y, b) group", applies=several_lrs),
    FigureEntry("knob_comparison", knob_comparison, "Rival knobs (Fig. 6, Table 2)", applies=has_rival_knobs),
    FigureEntry("landscape", landscape, "Landscapes over the LR and a second knob (Fig. 9)", applies=is_2d_grid),
    FigureEntry("minmax_table", minmax_table, "Min/max table (Tables 1–2)"),
    FigureEntry("training_curves", training_curves, "Training loss, accuracy and gradient norm", section=_TRAIN),
    FigureEntry("representation_dynamics", representation_dynamics,
                "The representation through training (Figs. 13, 15–16)", section=_TRAIN),
    FigureEntry("neuron_survival", neuron_survival, "Neuron survival (Fig. 18)", section=_TRAIN),
    FigureEntry("neuron_resets", neuron_resets, "Attribution resets of single neurons (Fig. 18, bottom)",
                section=_TRAIN, applies=lambda sw: "neuron_spurious_share" in sw),
    FigureEntry("subnetwork_gradients", subnetwork_gradients,
                "Spurious vs core subnetwork gradient norms (Proposition 2)", section=_TRAIN),
    FigureEntry("data_maps", data_maps, "Data maps: confidence against variability of every training sample",
                section=_SAMPLES),
    FigureEntry("dynamics_summary", dynamics_summary, "Learning and forgetting, bias-aligned vs bias-conflicting",
                section=_SAMPLES, applies=several_lrs),
    FigureEntry("importance", importance_trajectories,
                "Importance weights through training, from the minibatch log (Springer et al. Fig. 5)",
                section=_SAMPLES),
    FigureEntry("lorenz_curves", lorenz_curves,
                "Importance weights at the end of training, from the final snapshot's train logits", section=_SAMPLES),
    FigureEntry("pruning_curves", pruning_curves, "Pruning curves (Figs. 21–22)", section=_PRUNE),
    FigureEntry("loss_ratio_trajectories", loss_ratio_trajectories, "Bias-conflicting loss ratio (Fig. 12, left)",
                section=_PRUNE),
    FigureEntry("loss_ratio_vs_accuracy", loss_ratio_vs_accuracy, "Max BC loss ratio vs unbiased accuracy (Fig. 12)",
                section=_PRUNE, applies=several_lrs),
    FigureEntry("attribution_shares", attribution_shares,
                "Attribution shares per input region: raw and size-normalised (last attributed checkpoint)",
                section=_ATTR, applies=several_lrs),
    FigureEntry("attribution_grid", attribution_grid,
                "Attribution maps, lowest vs highest LR (Fig. 8; stored by the attributions probe)", section=_ATTR),
    FigureEntry("background_share", background_share,
                "Background attribution share and attribution entropy against the LR (Fig. 10; last attributed "
                "checkpoint)", section=_ATTR, applies=has_background_share),
]}
