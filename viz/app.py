"""``lrprobe serve``: explore a sweep's training dynamics in the browser (Panel + HoloViews on a
Bokeh server), reading the run stores directly; nothing is copied.

What it shows, for one (dataset, model) sweep at a time:

- a metric against the learning rate: every run a point (hover: run id, LR, seed, value), the
  seed mean as a line with its ± one standard deviation as a band;
- the representation through training: an iteration slider moves the per-neuron CSI and BSI
  (sorted, one curve per LR) and the class separation, activation compressibility and linear
  probe errors against the LR at that point of training;
- overlaid training curves of the chosen runs (loss, accuracy, bias-conflicting loss ratio,
  gradient/parameter/logit norms), one point per block of steps;
- the data map of a chosen run (the `dynamics` probe: confidence against variability of every
  training sample, bias-aligned and bias-conflicting apart); selecting samples (tap, lasso, or
  typing an index) shows the first one's input, its true-class probability at every presentation
  through training for every LR of the chosen seed, and its Integrated-Gradients attributions at
  the run's last checkpoint;
- ``--live``: runs still training are re-read every few seconds.

Everything the slider and the metric selector need is read once into small numpy arrays, so an
interaction only rebuilds a few curves; per-sample trajectories read only the log chunks that
hold the sample's presentations.

It shows what the stores hold and computes nothing of its own: runs are read through the store's
reader (`group_sweeps`, the report's grouping into sweeps; `open_sweep`, `open_run`,
`open_store`), the metric plot is the report's `figures.metric_panel`, the BC loss ratio is the
loss_ratio probe's function, trajectories follow the dynamics probe's rule
(`presentation_predictions`) and attributions the attributions probe's path
(`probe.probes.attributions.attribution_maps`).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import holoviews as hv
import numpy as np
import panel as pn
import xarray as xr

from ..probe.metrics import loss_ratio
from ..store import schema as S
from .figures import _palette, block_mean, metric_panel

CURVES = {  # training-curve choices: label -> how to get it from a run's log
    "loss": "loss", "accuracy": "accuracy", "BC loss ratio": "bc_share", "gradient norm": "grad_norm",
    "parameter norm": "param_norm", "logit norm": "logit_norm", "learning rate": "lr",
}
TRAJECTORY_METRICS = {  # per-snapshot probe variables the slider moves through
    "class separation R²": "class_separation", "activation compressibility": "activation_compressibility",
    "core probe error": "core_probe_error", "spurious probe error": "spurious_probe_error",
    "average CSI": "csi_mean", "average BSI": "bsi_mean", "unbiased accuracy (probe subset)": "probe_accuracy",
}
MAX_CURVE_POINTS = 1500
MAX_MAP_POINTS = 4000  # points drawn in a data map (the browser's cost grows with them)


def md_text(value) -> str:
    """A string read from a store, for a Markdown pane: shown as the text it is. Every ASCII
    punctuation character is backslash-escaped (CommonMark: then it is a literal character, never
    markup, an HTML tag or a link) and control characters are shown as their escapes, so what a
    store carries cannot add elements or run script in the explorer."""
    text = "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in str(value))
    return "".join("\\" + ch if ch in _MD_PUNCT else ch for ch in text)


_MD_PUNCT = frozenset("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")


# ------------------------------------------------------------------------------- data
@dataclass
class Run:
    path: Path
    run_id: str
    config: dict
    status: str
    committed: dict

    @property
    def lr(self) -> float:
        return float(self.config["lr"])

    @property
    def seed(self) -> int:
        return int(self.config["seed"])


def discover(paths) -> dict[str, list[Run]]:
    """Run stores under `paths`, one group per sweep (`store.reader.group_sweeps`, the report's
    grouping: only their checked root attributes are read), runs in LR, seed order. A store
    being created or a damaged one is not shown (`lrprobe ls` says why)."""
    from ..store.reader import group_sweeps

    groups: dict[str, list[Run]] = {}
    for (dataset, model), found in group_sweeps(paths, skip_unreadable=True).items():
        runs = [Run(p, attrs.get(S.ATTR_RUN_ID, p.stem), attrs[S.ATTR_CONFIG], attrs[S.ATTR_STATUS],
                    attrs[S.ATTR_COMMITTED]) for p, attrs in found]
        groups[f"{dataset} / {model}"] = sorted(runs, key=lambda r: (r.lr, r.seed, r.run_id))
    return groups


@dataclass
class SweepData:
    """What the explorer shows for one (dataset, model) sweep, read into memory once: per-run
    scalars, per-snapshot probe curves, per-neuron selectivities, downsampled training curves.
    Per-sample data (the data map, trajectories) is read on demand."""

    runs: list[Run]
    scalars: dict[str, np.ndarray] = field(default_factory=dict)  # metric -> value per run
    table: xr.Dataset | None = None  # the per-run scalars along `run` with lr, seed, status: figures.metric_panel
    labels: dict[str, str] = field(default_factory=dict)  # metric -> long name
    snap_iter: list[np.ndarray] = field(default_factory=list)  # per run: snapshot iterations
    per_snap: dict[str, list[np.ndarray]] = field(default_factory=dict)  # var -> per run (snapshot,)
    neurons: dict[str, list[np.ndarray]] = field(default_factory=dict)  # csi/bsi -> per run (snapshot, neuron)
    curves: dict[str, list[tuple[np.ndarray, np.ndarray]]] = field(default_factory=dict)
    # run id -> what `lrprobe ls` says of it where that is more than the stored status: "max_steps"
    # (completed before its stop criterion), "stalled" (the stall probe's flag)
    flags: dict[str, str] = field(default_factory=dict)
    _datasets: dict = field(default_factory=dict)

    @classmethod
    def load(cls, runs: list[Run]) -> "SweepData":
        """One `open_sweep` over the runs (it reuses one run's layout for the others: ~2 s for 100
        runs), then the small arrays the views need, read whole."""
        from ..store.reader import open_sweep

        sd = cls(runs)
        sw = open_sweep([r.path for r in runs])
        ids = [str(v) for v in (sw.run_id.values if "run_id" in sw.coords else sw.run.values)]
        order = [ids.index(r.run_id) for r in runs]  # sw's run order -> ours
        sw = sw.isel(run=order)
        n = len(runs)
        for v, da in sw.data_vars.items():
            if da.dims == ("run",) and da.dtype.kind in "biuf":
                sd.labels[v] = da.attrs.get("long_name", v)
                sd.scalars[v] = np.asarray(da.values, dtype=float)
        sd.table = xr.Dataset({v: ("run", a, sw[v].attrs) for v, a in sd.scalars.items()},
                              coords={"run": sw.run.values, "run_id": ("run", [r.run_id for r in runs]),
                                      **{c: ("run", sw[c].values) for c in ("lr", "seed", "status")}})
        for i, r in enumerate(runs):
            if r.status != S.STATUS_COMPLETED:
                continue
            if "stalled" in sw and sw.stalled.dims == ("run",) and bool(sw.stalled.values[i] == 1):
                sd.flags[r.run_id] = "stalled"
            elif "stop_criterion_met" in sw.coords and not bool(sw.stop_criterion_met.values[i]):
                sd.flags[r.run_id] = "max_steps"
        snap_it = np.asarray(sw.snapshot_iteration.values, dtype=float) if "snapshot_iteration" in sw else \
            np.zeros((n, 0))
        valid = np.isfinite(snap_it)
        sd.snap_iter = [snap_it[i][valid[i]].astype(int) for i in range(n)]
        for v in TRAJECTORY_METRICS.values():
            arr = np.asarray(sw[v].values, dtype=float) if v in sw and sw[v].dims == ("run", "snapshot") else \
                np.full(snap_it.shape, np.nan)
            sd.per_snap[v] = [arr[i][valid[i]] for i in range(n)]
        for v in ("csi", "bsi"):
            if v in sw and set(sw[v].dims) == {"run", "snapshot", "neuron"}:
                arr = np.asarray(sw[v].transpose("run", "snapshot", "neuron").values, dtype=float)
                sd.neurons[v] = [arr[i][valid[i]] for i in range(n)]
            else:
                sd.neurons[v] = [np.zeros((len(s_), 0)) for s_ in sd.snap_iter]
        n_it = np.array([r.committed["iteration"] for r in runs])
        lr_log = next((c for c in ("lr_schedule", "step_lr", "log_lr", "lr") if c in sw and "iteration" in sw[c].dims),
                      None)
        for v in CURVES.values():
            name = lr_log if v == "lr" else v
            if v == "bc_share" and "bc_loss_sum" in sw:  # the loss_ratio probe's function, on the logged sums
                arr = np.asarray(loss_ratio(sw.bc_loss_sum, sw.ba_loss_sum).values, dtype=float)
            elif name is not None and name in sw and sw[name].dims == ("run", "iteration"):
                arr = np.asarray(sw[name].values, dtype=float)
            else:
                sd.curves[v] = [(np.zeros(0), np.zeros(0))] * n
                continue
            sd.curves[v] = [block_mean(arr[i][: n_it[i]], MAX_CURVE_POINTS) for i in range(n)]
        return sd

    def dataset(self, run_id: str):
        """One run's lazy Dataset (with probes), opened on first use."""
        if run_id not in self._datasets:
            from ..store.reader import open_run

            run = next(r for r in self.runs if r.run_id == run_id)
            try:
                self._datasets[run_id] = open_run(run.path)
            except Exception:
                self._datasets[run_id] = None
        return self._datasets[run_id]

    def iterations(self) -> list[int]:
        its = sorted({int(i) for s in self.snap_iter for i in s})
        return its or [0]


class LogIndex:
    """Where each training sample was presented: a run's committed `log/batch_index` and train
    labels, read once per run and state (1.2 MB for the demo's runs) and kept for every session."""

    _cache: dict[tuple, "LogIndex"] = {}

    def __init__(self, run: Run):
        from ..store.reader import open_store

        self.root = open_store(run.path)
        n = run.committed["iteration"]
        self.index = np.asarray(self.root[f"{S.G_LOG}/{S.A_BATCH_INDEX}"][:n])
        self.y = np.asarray(self.root[f"{S.G_DATA}/train/y"][...])

    @classmethod
    def of(cls, run: Run) -> "LogIndex":
        key = (str(run.path), json.dumps(run.committed, sort_keys=True))
        if key not in cls._cache:
            if len(cls._cache) > 256:
                cls._cache.clear()
            cls._cache[key] = cls(run)
        return cls._cache[key]


def sample_trajectory(run: Run, sample: int) -> tuple[np.ndarray, np.ndarray]:
    """(iterations, true-class probability) of one training sample at each of its presentations
    with a prediction, from the minibatch log (its logits, or the summary's true-class
    log-probability) by the dynamics probe's rule (`presentation_predictions`: their mean is the
    sample's stored `dyn_confidence`): only the log chunks that hold them are read."""
    from ..probe.dynamics import presentation_predictions

    li = LogIndex.of(run)
    it, slot = np.nonzero(li.index == sample)
    if len(it) == 0:
        return it, np.zeros(0)
    if S.log_policy(li.root.attrs.asdict()) == S.LOG_SUMMARY:  # the summary record: log p(y|x) itself
        lp = np.asarray(li.root[f"{S.G_LOG}/{S.A_BATCH_TRUE_LOGPROB}"].vindex[it, slot], dtype=np.float64)
        keep = np.isfinite(lp)  # NaN: no prediction (the dynamics probe's rule)
        return it[keep], np.exp(lp[keep])
    arr = li.root[f"{S.G_LOG}/{S.A_BATCH_LOGITS}"]
    c = np.arange(arr.shape[2])
    logits = np.asarray(arr.vindex[it[:, None], slot[:, None], c[None, :]])  # (n, class)
    keep, p, _ = presentation_predictions(logits, np.full(len(it), int(li.y[sample])))
    return (it if keep is None else it[keep]), p


_BUNDLES: dict[str, object] = {}


def sample_input(run: Run, sample: int):
    """The raw input of a training sample, rebuilt from the run's config (the store keeps only
    the test probe subset's inputs; built datasets are cached on disk and here); None when the
    dataset cannot be rebuilt on this machine."""
    from ..train.data import build_dataset

    cfg = run.config
    key = json.dumps([cfg.get(k) for k in ("dataset", "data_seed", "bias_conflicting_ratio", "data_root",
                                           "data_options", "val_fraction")], sort_keys=True, default=str)
    if key not in _BUNDLES:
        try:  # the training split as trained on: less the validation samples held out (absent: none)
            _BUNDLES[key] = build_dataset(cfg["dataset"], seed=cfg["data_seed"],
                                          bias_conflicting_ratio=cfg["bias_conflicting_ratio"],
                                          data_root=cfg.get("data_root"), val_fraction=cfg.get("val_fraction", 0.0),
                                          **cfg.get("data_options", {}))
        except Exception:
            _BUNDLES[key] = None
    b = _BUNDLES[key]
    return (None, None) if b is None else (b.train.x[sample].numpy(), b)


_SHARED: dict[tuple, SweepData] = {}  # across browser sessions: keyed by every run's committed state


def shared_data(runs: list[Run]) -> SweepData:
    """The sweep's data, loaded once per state of its runs for all browser sessions (the stores
    are read-only here; a run that trains on gets a new key)."""
    key = tuple((r.run_id, json.dumps(r.committed, sort_keys=True), r.status) for r in runs)
    if key not in _SHARED:
        if len(_SHARED) > 8:
            _SHARED.clear()
        _SHARED[key] = SweepData.load(runs)
    return _SHARED[key]


# ------------------------------------------------------------------------------- the app
class Explorer:
    """The app's state and views. One instance per browser session."""

    def __init__(self, paths, live: bool = False):
        hv.extension("bokeh", logo=False)
        self.paths = paths
        self.groups = discover(paths)
        if not self.groups:
            from ..errors import StoreError

            raise StoreError(f"{', '.join(map(str, paths))}: no readable run stores")
        self._cache: dict[str, SweepData] = {}
        first = next(iter(self.groups))
        self.w_group = pn.widgets.Select(label="Sweep (dataset / model)", options=list(self.groups), value=first,
                                         css_classes=["lrscope-group"])
        self.w_metric = pn.widgets.Select(label="Metric against the LR", css_classes=["lrscope-metric"], width=420)
        self.w_seeds = pn.widgets.MultiChoice(label="Seeds", css_classes=["lrscope-seeds"])
        self.w_iter = pn.widgets.DiscreteSlider(label="Iteration", options=[0], value=0,
                                                css_classes=["lrscope-iteration"], sizing_mode="stretch_width")
        self.w_curve = pn.widgets.Select(label="Training curve", options=list(CURVES), value="loss",
                                         css_classes=["lrscope-curve"])
        self.w_run = pn.widgets.Select(label="Run for the data map", css_classes=["lrscope-run"], width=420)
        self.w_sample = pn.widgets.IntInput(label="Sample (training index)", value=-1, start=-1,
                                            css_classes=["lrscope-sample"])
        self.status = pn.pane.Str("", name="status", css_classes=["lrscope-status"])
        self.updates = 0
        self._select_group(first)
        self.w_group.param.watch(lambda e: self._select_group(e.new), "value")
        self.live = live

    # ------------------------------------------------------------------ state
    @property
    def data(self) -> SweepData:
        key = self.w_group.value
        if key not in self._cache:
            self._cache[key] = shared_data(self.groups[key])
        return self._cache[key]

    def _select_group(self, key: str) -> None:
        d = self.data
        opts = {f"{d.labels[v]} ({v})": v for v in d.scalars if np.isfinite(d.scalars[v]).any()}
        self.w_metric.options = opts
        default = next((v for v in ("unbiased_accuracy_final", "csi_mean_final", "prunability") if v in opts.values()),
                       next(iter(opts.values()), None))
        self.w_metric.value = default
        seeds = sorted({r.seed for r in d.runs})
        self.w_seeds.options = seeds
        self.w_seeds.value = seeds[:2]  # curves per run stay few on big sweeps; add seeds to see more
        its = d.iterations()
        self.w_iter.options = its
        self.w_iter.value = its[-1]
        self.w_run.options = {f"{r.run_id} ({d.flags.get(r.run_id, r.status)})": r.run_id for r in d.runs}
        self.w_run.value = d.runs[-1].run_id

    def _chosen(self) -> list[int]:
        seeds = set(self.w_seeds.value or [])
        return [i for i, r in enumerate(self.data.runs) if r.seed in seeds]

    def _tick(self, what: str) -> None:
        self.updates += 1
        self.status.object = f"update {self.updates}: {what}"

    def refresh(self) -> None:
        """--live: re-read the runs of the current sweep that were still training."""
        key = self.w_group.value
        groups = discover(self.paths)
        old = {r.run_id: r for r in self.groups.get(key, [])}
        new = groups.get(key, [])
        changed = [r.run_id for r in new if r.run_id not in old or old[r.run_id].committed != r.committed
                   or old[r.run_id].status != r.status]
        if not changed:
            return
        self.groups = groups
        self._cache.pop(key, None)
        keep = {w: w.value for w in (self.w_metric, self.w_seeds, self.w_run)}
        self._select_group(key)
        for w, v in keep.items():  # what the user chose stays chosen while the runs move on
            opts = w.options.values() if isinstance(w.options, dict) else w.options
            if (isinstance(v, list) and set(v) <= set(opts)) or (not isinstance(v, list) and v in opts):
                w.value = v
        self._tick(f"refreshed {len(changed)} run(s)")

    # ------------------------------------------------------------------ views
    def metric_vs_lr(self, metric, seeds, group):
        """The report's metric panel (`figures.metric_panel`) of the chosen seeds' runs."""
        d = self.data
        if metric is None or metric not in d.scalars:
            return hv.Overlay([hv.Text(0, 0, "no probe results yet: run lrprobe compute")])
        label = d.labels.get(metric, metric)
        panel = metric_panel(d.table.isel(run=self._chosen()), metric, label)
        self._tick(f"metric {metric}")
        return panel.opts(
            responsive=True, height=340, framewise=True,
            title=f"{label} against the learning rate (every run; line: seed mean ± sd of the completed runs)")

    def _at_iteration(self, it: int) -> list[int]:
        """Per run: the last snapshot at or before iteration `it` (-1: none)."""
        return [int(np.searchsorted(s, it, side="right")) - 1 for s in self.data.snap_iter]

    def selectivity(self, it, seeds, group, which="csi"):
        """Per LR: the neurons' selectivity at the iteration, sorted, averaged over the chosen seeds."""
        d = self.data
        pos = self._at_iteration(it)
        idx = self._chosen()
        lrs = sorted({d.runs[i].lr for i in idx})
        colors = _palette(len(lrs))
        curves = []
        for c, lr in zip(colors, lrs):
            rows = [np.sort(d.neurons[which][i][pos[i]])[::-1] for i in idx
                    if d.runs[i].lr == lr and pos[i] >= 0 and d.neurons[which][i].size]
            if not rows or len({len(r) for r in rows}) != 1:
                continue
            v = np.nanmean(np.stack(rows), axis=0)
            curves.append(hv.Curve((np.arange(len(v)), v), "neuron (sorted)", which.upper(),
                                   label=f"lr={lr:g}").opts(color=c))
        name = {"csi": "class selectivity (CSI)", "bsi": "bias selectivity (BSI)"}[which]
        return hv.Overlay(curves or [hv.Curve([], "neuron (sorted)", which.upper())]).opts(
            title=f"{name} per neuron at iteration {it} (seed mean)", responsive=True, height=300,
            legend_position="right", ylim=(0, 1), framewise=True)

    def representation_vs_lr(self, it, seeds, group):
        d = self.data
        pos = self._at_iteration(it)
        idx = self._chosen()
        lrs = sorted({d.runs[i].lr for i in idx})
        curves = []
        for label, v in TRAJECTORY_METRICS.items():
            if v in ("probe_accuracy",):
                continue
            vals = np.array([d.per_snap[v][i][pos[i]] if pos[i] >= 0 and len(d.per_snap[v][i]) else np.nan
                             for i in idx])
            if not np.isfinite(vals).any():
                continue
            mean = [np.nanmean(vals[[d.runs[i].lr == lr for i in idx]]) if np.isfinite(
                vals[[d.runs[i].lr == lr for i in idx]]).any() else np.nan for lr in lrs]
            curves.append(hv.Curve((lrs, mean), "lr", "value", label=label).opts(tools=["hover"]) *
                          hv.Scatter((lrs, mean), "lr", "value", label=label).opts(size=6))
        self._tick(f"iteration {it}")
        return hv.Overlay(curves or [hv.Curve([], "lr", "value")]).opts(
            logx=True, title=f"representation against the LR at iteration {it} (seed mean)", responsive=True,
            height=300, legend_position="right", xlabel="learning rate", framewise=True)

    def training_curves(self, which, seeds, group):
        d = self.data
        v = CURVES[which]
        idx = self._chosen()
        colors = _palette(len(idx))
        curves = []
        for c, i in zip(colors, idx):
            x, y = d.curves[v][i]
            if len(x):
                curves.append(hv.Curve((x, y), "iteration", which, label=f"lr={d.runs[i].lr:g} s{d.runs[i].seed}")
                              .opts(color=c, tools=["hover"]))
        logy = v in ("loss", "grad_norm", "param_norm", "logit_norm")
        return hv.Overlay(curves or [hv.Curve([], "iteration", which)]).opts(
            title=f"{which} through training (block means)", responsive=True, height=320, legend_position="right",
            logy=logy, framewise=True)

    def data_map(self, run_id, group):
        ds = self.data.dataset(run_id)
        if ds is None or "dyn_confidence" not in ds:
            return hv.Points([], ["variability", "confidence"]).opts(
                title="no dynamics probe for this run: run lrprobe compute", responsive=True, height=380)
        bc = ds.train_bias_conflicting.values.astype(bool)
        idx = np.arange(len(bc))
        if len(idx) > MAX_MAP_POINTS:  # every bias-conflicting sample, a fixed random share of the others
            rest = np.random.default_rng(0).choice(np.flatnonzero(~bc), max(0, MAX_MAP_POINTS - int(bc.sum())),
                                                   replace=False)
            idx = np.sort(np.concatenate([np.flatnonzero(bc), rest]))
        self._map_samples = idx  # position in the plot -> training sample
        data = {"variability": ds.dyn_variability.values[idx], "confidence": ds.dyn_confidence.values[idx],
                "sample": idx, "y": ds.train_y.values[idx], "b": ds.train_b.values[idx],
                "kind": np.where(bc[idx], "bias-conflicting", "bias-aligned"),
                "correctness": ds.dyn_correctness.values[idx], "forgetting": ds.dyn_forgetting_events.values[idx]}
        shown = "every training sample" if len(idx) == len(bc) else \
            f"{len(idx)} of {len(bc)} training samples, every bias-conflicting one"
        pts = hv.Points(data, ["variability", "confidence"],
                        ["kind", "sample", "y", "b", "correctness", "forgetting"]).opts(
            color="kind", cmap={"bias-aligned": "#3a7dbf", "bias-conflicting": "#e0542c"}, size=4, alpha=0.6,
            tools=["hover", "tap", "lasso_select", "box_select"], responsive=True, height=380,
            legend_position="top_right",
            title=f"data map of {run_id}: confidence against variability ({shown})",
            nonselection_alpha=0.1, framewise=True)
        return pts

    def _on_select(self, index):
        if index:
            samples = getattr(self, "_map_samples", None)
            self.w_sample.value = int(samples[index[0]]) if samples is not None else int(index[0])

    def sample_views(self, sample, run_id, seeds, group):
        d = self.data
        if sample is None or sample < 0:
            return pn.pane.Markdown("Select a sample in the data map (tap or lasso), or type its index above.")
        run = next(r for r in d.runs if r.run_id == run_id)
        ds = d.dataset(run_id)
        if ds is None or sample >= ds.sizes.get("train_sample", 0):
            return pn.pane.Markdown(f"sample {sample} is not a training sample of {md_text(run_id)}")
        seed = run.seed
        same_seed = [i for i, r in enumerate(d.runs) if r.seed == seed]
        colors = _palette(len(same_seed))
        traj = []
        for c, i in zip(colors, same_seed):
            try:
                it, p = sample_trajectory(d.runs[i], sample)
            except Exception:  # a damaged or vanished store: its curve is missing
                continue
            traj.append(hv.Curve((it, p), "iteration", "p(true class)", label=f"lr={d.runs[i].lr:g}")
                        .opts(color=c, tools=["hover"]))
        y, b = int(ds.train_y.values[sample]), int(ds.train_b.values[sample])
        head = (f"**sample {sample}** — y = {y}, b = {b}, "
                f"{'bias-conflicting' if y != b else 'bias-aligned'}; in {md_text(run_id)}: confidence "
                f"{float(ds.dyn_confidence.values[sample]):.3f}, forgetting events "
                f"{int(ds.dyn_forgetting_events.values[sample])}" if "dyn_confidence" in ds else f"**sample {sample}**")
        trajectory = hv.Overlay(traj or [hv.Curve([], "iteration", "p(true class)")]).opts(
            title=f"true-class probability at each presentation (seed {seed}, every LR)", responsive=True, height=300,
            legend_position="right", ylim=(0, 1.02))
        x, bundle = sample_input(run, sample)
        views = [pn.pane.Markdown(head), pn.pane.HoloViews(trajectory, sizing_mode="stretch_width")]
        if x is not None:
            views.append(pn.pane.HoloViews(self._input_view(x, ds, "input"), sizing_mode="stretch_width"))
            attr = self._attribution(run, ds, x, y)
            if isinstance(attr, str):  # a plugin model that cannot be rebuilt here: why
                views.append(pn.pane.Markdown(f"*attributions not shown: {attr}*"))
            elif attr is not None:
                views.append(pn.pane.HoloViews(self._input_view(attr, ds, "Integrated Gradients (last checkpoint)"),
                                               sizing_mode="stretch_width"))
        else:
            views.append(pn.pane.Markdown("*input not shown: the dataset cannot be rebuilt here (data root?)*"))
        self._tick(f"sample {sample}")
        return pn.Column(*views, sizing_mode="stretch_width")

    def _attribution(self, run: Run, ds, x: np.ndarray, y: int):
        """Integrated Gradients of one training sample by the attributions probe's code path
        (`probe.probes.attributions.attribution_maps`, its parameters and its last checkpoint); a string says
        why not (a plugin model missing or changed), None when it cannot be computed."""
        try:
            from ..errors import PluginError
            from ..probe.context import Context
            from ..probe.probes.attributions import attributed_checkpoints, attribution_inputs, attribution_maps

            ctx = Context(run.path, ds, device="cpu", allow_changed_plugins=ALLOW_CHANGED_PLUGINS)
            try:
                model = ctx.load_model(attributed_checkpoints(ctx)[-1])
            except PluginError as e:  # missing, or changed since training (lrprobe serve --allow-changed-plugins)
                return str(e)
            xt, yt = attribution_inputs(ctx, x[None], [y])
            a = attribution_maps(ctx, model.to(ctx.torch_device), xt, yt, "integrated_gradients",
                                 list(ds.probe_inputs.dims[1:]))
            return a.values[0]
        except Exception:
            return None

    def _input_view(self, x: np.ndarray, ds, title: str):
        x = np.asarray(x, dtype=float)
        if x.ndim == 1:  # a vector input (parity): a strip with the regions marked
            el = hv.HeatMap([(i, 0, float(v)) for i, v in enumerate(x)], ["input", " "], "value").opts(
                cmap="RdBu_r", colorbar=True, responsive=True, height=130, title=title, tools=["hover"],
                yaxis=None, symmetric=True)
            if "regions" in ds:
                regs = ds.regions.values
                marks, spans = [], []
                for k, name in enumerate(str(r) for r in ds.region.values):
                    on = np.flatnonzero(regs[k])
                    if len(on):
                        marks.append(hv.VLine(on[-1] + 0.5).opts(color="black", line_width=2))
                        spans.append(f"{name} {on[0]}–{on[-1]}" if len(on) > 1 else f"{name} {on[0]}")
                return (el * hv.Overlay(marks)).opts(responsive=True, height=130,
                                                     title=f"{title} (inputs: {', '.join(spans)})")
            return el
        if x.ndim == 3:  # (channel, H, W)
            img = x.transpose(1, 2, 0)
            if img.shape[-1] == 1 or title != "input":
                v = img.sum(-1)
                return hv.Image(v[::-1], bounds=(0, 0, v.shape[1], v.shape[0])).opts(
                    cmap="gray" if title == "input" else "RdBu_r", colorbar=True, title=title, width=260, height=260)
            img = img / max(img.max(), 1e-9)
            return hv.RGB(img[::-1], bounds=(0, 0, img.shape[1], img.shape[0])).opts(title=title, width=260, height=260)
        return hv.Text(0, 0, f"input of shape {x.shape}")

    # ------------------------------------------------------------------ layout
    def layout(self):
        g = self.w_group
        metric = hv.DynamicMap(pn.bind(self.metric_vs_lr, self.w_metric, self.w_seeds, g))
        csi = hv.DynamicMap(pn.bind(self.selectivity, self.w_iter, self.w_seeds, g, "csi"))
        bsi = hv.DynamicMap(pn.bind(self.selectivity, self.w_iter, self.w_seeds, g, "bsi"))
        rep = hv.DynamicMap(pn.bind(self.representation_vs_lr, self.w_iter, self.w_seeds, g))
        curves = hv.DynamicMap(pn.bind(self.training_curves, self.w_curve, self.w_seeds, g))
        dmap = hv.DynamicMap(pn.bind(self.data_map, self.w_run, g))
        self.sel = hv.streams.Selection1D(source=dmap)  # tap / lasso in the data map
        self.sel.add_subscriber(self._on_select)
        sample = pn.bind(self.sample_views, self.w_sample, self.w_run, self.w_seeds, g)
        n = sum(len(v) for v in self.groups.values())
        header = pn.pane.Markdown(
            f"## lrscope explorer — {n} run(s) in {len(self.groups)} sweep(s)\n"
            "Choose a sweep, the seeds and a metric; move the iteration slider through training; tap or lasso "
            "samples in the data map.", sizing_mode="stretch_width")
        controls = pn.Row(self.w_group, self.w_seeds, self.w_metric, sizing_mode="stretch_width")
        pane = lambda obj: pn.pane.HoloViews(obj, sizing_mode="stretch_width", linked_axes=False)  # noqa: E731
        app = pn.Column(
            header, controls,
            pane(metric),
            pn.pane.Markdown("### The representation through training"), self.w_iter,
            pn.Row(pane(csi), pane(bsi), sizing_mode="stretch_width"), pane(rep),
            pn.pane.Markdown("### Training curves"), self.w_curve, pane(curves),
            pn.pane.Markdown("### Per-sample dynamics"), pn.Row(self.w_run, self.w_sample),
            pn.Row(pane(dmap), pn.panel(sample, sizing_mode="stretch_width"), sizing_mode="stretch_width"),
            self.status, sizing_mode="stretch_width", styles={"padding": "0 1em"})
        if self.live:
            pn.state.add_periodic_callback(self.refresh, period=5000)
        return app


ALLOW_CHANGED_PLUGINS = False  # lrprobe serve --allow-changed-plugins: rebuild plugin models whose source changed


def serve(paths, *, port: int = 5006, address: str = "127.0.0.1", live: bool = False, show: bool = False,
          ready=None, allow_changed_plugins: bool = False) -> None:
    """Serve the explorer on a Bokeh server until interrupted. Each browser session gets its own
    `Explorer`; the stores are read where they are. `ready(url)` is called once it listens.
    `allow_changed_plugins`: the per-sample attributions rebuild a plugin model whose source
    changed since training (else they say why they are not shown)."""
    global ALLOW_CHANGED_PLUGINS
    ALLOW_CHANGED_PLUGINS = allow_changed_plugins
    discover_check = discover(paths)  # fail early, before the server starts, on paths with no runs
    if not discover_check:
        from ..errors import StoreError

        raise StoreError(f"{', '.join(map(str, paths))}: no readable run stores")
    t0 = time.perf_counter()
    hv.extension("bokeh", logo=False)
    from ..errors import LrscopeError

    try:  # binds the port at once: a taken port is the one-line error before anything is loaded
        server = _make_server(paths, port, address, live, show)
    except OSError as e:  # the port is taken, the address is not this machine's
        raise LrscopeError(f"cannot listen on {address}:{port} ({e.strerror or e}); choose another --port "
                           "(0: any free port)") from None
    shared_data(next(iter(discover_check.values())))  # the first page shows the first sweep: load it now
    url = f"http://{address}:{port}/"
    if ready is not None:
        ready(url)
    print(f"lrscope explorer at {url} (ready in {time.perf_counter() - t0:.1f} s; Ctrl-C stops it)", flush=True)
    server.start()
    try:
        server.io_loop.start()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


def _make_server(paths, port, address, live, show):
    """A Bokeh server (not started) whose every session gets its own `Explorer`, answering only
    the routes the explorer's page uses (`guard_routes`)."""
    server = pn.serve({"/": lambda: Explorer(paths, live=live).layout()}, port=port, address=address, show=show,
                      start=False, title="lrscope explorer",
                      websocket_origin=[f"{address}:{port}", f"localhost:{port}"])
    guard_routes(server, address)
    return server


# What the explorer's page requests (seen in Chromium): the document, Bokeh's and Panel's static
# files, and the websocket. Anything else Bokeh/Panel would answer is closed: Panel's
# /components/<module>/... imports the module named in the URL (panel 1.9.4, the newest release, still
# does: importlib.import_module on the first path segment), /autoload.js and /metadata let another
# site embed the app.
OPEN_ROUTES = re.compile(r"^/(|ws|favicon\.ico|static/.*)$")


def allowed_hosts(address: str, port: int) -> set[str] | None:
    """The Host headers the server answers (None: any, for a wildcard bind such as 0.0.0.0)."""
    if address in ("0.0.0.0", "::", ""):
        return None
    names = {address, f"[{address}]"} if ":" in address else {address}
    if address in ("127.0.0.1", "localhost", "::1"):
        names |= {"127.0.0.1", "localhost", "[::1]"}
    return {f"{n}:{port}" for n in names}


def guard_routes(server, address: str) -> None:
    """Every HTTP request to `server` (a bokeh Server, before it starts) passes two checks before
    any handler runs: its Host is this server's (DNS rebinding: a page of another site resolving its
    name to 127.0.0.1) and its Origin, when sent, is the same host (cross-site requests); and its path
    is one of `OPEN_ROUTES` (404 otherwise: no handler, so no module is ever imported from a URL)."""
    from urllib.parse import urlsplit

    from tornado.web import ErrorHandler

    app = server._tornado  # the tornado Application behind bokeh's Server (bokeh has no public accessor)
    hosts = allowed_hosts(address, server.port)
    find = app.find_handler

    def find_handler(request, **kw):
        host = request.host or ""
        origin = request.headers.get("Origin")
        if (hosts is not None and host not in hosts) or (origin is not None and urlsplit(origin).netloc != host):
            return app.get_handler_delegate(request, ErrorHandler, {"status_code": 403})
        if not OPEN_ROUTES.match(request.path):
            return app.get_handler_delegate(request, ErrorHandler, {"status_code": 404})
        return find(request, **kw)

    app.find_handler = find_handler
