"""``lrprobe compute``: map the metrics over a run's snapshots and checkpoints and write each
result as an xarray Dataset under ``probes/<name>`` in the run's store, with provenance.

A probe is up to date when its stored provenance (lrscope version, parameters, and the run's
committed lengths) matches what it would be computed from now; such probes are skipped.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable

import numpy as np
import xarray as xr

from .. import __version__
from ..errors import LrscopeError, ModelNotStored, PluginChanged, PluginError, StoreError
from ..parallel import dask_map, pool_processes, worker_threads
from ..store import schema as S
from ..store.probes import stored_provenance, write_probe
from ..store.reader import open_run, open_store
from ..train.plugins import check_run, is_import_path, source_sha256
from . import metrics as M
from .linear import feature_probe
from .pruning import KAPPAS, KINDS, prunability, prunability_sum, pruned_accuracy
from .registry import PARAMS, PROBES  # the probes' entries: function, format, params, headline variables


@dataclass
class Context:
    """What a probe may ask for about one run; expensive things are built on first use."""

    path: Path
    ds: xr.Dataset
    data_root: str | None = None
    params: dict = field(default_factory=dict)
    device: str = "auto"  # where the probes that run the network run: cpu | cuda | auto (check_device)
    used_device: bool = False  # whether the probe being computed asked for torch_device
    allow_changed_plugins: bool = False  # rebuild a plugin model whose source changed since training

    @cached_property
    def _device(self):
        return probe_device(self.device)

    @property
    def torch_device(self):
        """The torch device of the probes that run the network (its use is recorded in the result)."""
        self.used_device = True
        return self._device

    @property
    def config(self) -> dict:
        return self.ds.attrs["config"]

    @cached_property
    def model(self):
        return self.load_model(-1)  # the last checkpoint of this view

    def load_model(self, checkpoint: int):
        """The run's network at a checkpoint of this view (a plugin model's run: PluginMissing or
        PluginChanged in one line, which the runner records as the probe's "not defined" reason)."""
        from ..train.restore import load_model

        return load_model(self.ds, checkpoint=checkpoint, allow_changed_plugins=self.allow_changed_plugins)

    @cached_property
    def weights(self) -> list[tuple[str, np.ndarray]]:
        """(state-dict name, array) of the last checkpoint's parameters with more than one dimension
        (linear and convolution weights), in the model's order: read from the store's arrays where
        it lists its parameters (model_info parameter_names; no model is rebuilt, so a plugin
        model's run needs no plugin), else from the rebuilt model (stores written before the list)."""
        names = (self.ds.attrs.get("model_info") or {}).get("parameter_names")
        if not isinstance(names, list):
            return [(n, p.detach().cpu().numpy()) for n, p in self.model.named_parameters() if p.ndim > 1]
        from ..store.reader import check_array

        k = int(self.ds.attrs["committed"]["checkpoint"]) - 1
        if k < 0:
            raise StoreError(f"{self.path}: no committed checkpoint")
        params = open_store(self.path)[S.G_PARAMS]
        out = []
        for n in names:
            if not isinstance(n, str) or n not in params:
                raise StoreError(f"{self.path}: checkpoint lacks parameter {n!r} (corrupted store)")
            arr = params[n]
            check_array(arr)
            if arr.ndim < 1 or arr.shape[0] <= k:
                raise StoreError(f"{self.path}: parameter {n!r} has shape {tuple(arr.shape)}, shorter than its "
                                 f"{k + 1} committed checkpoints (corrupted store)")
            if arr.ndim > 2:  # (checkpoint, *shape): a parameter of more than one dimension
                out.append((n, np.asarray(arr[k])))
        return out

    @cached_property
    def features(self) -> xr.DataArray:
        """The penultimate activations of the probe subset at every snapshot, read once for the
        probes that use them (compressibility, representation, feature_quality)."""
        return self.ds.probe_features.compute()

    @cached_property
    def selective_features(self) -> xr.DataArray:
        """The non-negative representation selectivity and activation sparsity use
        (:func:`selective_representation`)."""
        model = None if S.recorded_by_api(self.ds.attrs) else self.config.get("model")  # a user's own network
        return selective_representation(self.features, model,
                                        (self.ds.attrs.get("model_info") or {}).get("signed_features"))

    @cached_property
    def selectivity(self) -> tuple[xr.DataArray, xr.DataArray]:
        """(CSI, BSI) of every neuron at every snapshot on the non-negative representation, computed
        once for the probes that use them (representation, subnetwork_gradients)."""
        sel = self.selective_features
        kw = dict(sample_dim="probe_sample", feature_dim="neuron")
        csi = M.selectivity(sel, self.ds.probe_y.values, name="class", **kw)
        bsi = M.selectivity(sel, self.ds.probe_b.values, name="bias", **kw)
        for v in (csi, bsi):
            v.attrs["representation"] = sel.attrs["representation"]
        return csi, bsi

    @cached_property
    def bundle(self):
        """The run's dataset rebuilt from its config (both splits), or None when it cannot be
        rebuilt here (no data root) or its labels differ from the stored ones."""
        from ..train.data import build_dataset

        cfg = self.config
        try:
            if is_import_path(cfg["dataset"]):  # a plugin dataset: importable here and unchanged
                check_run({"plugins": self.ds.attrs.get("plugins") or {}, "config": cfg}, "dataset",
                          self.allow_changed_plugins)
            bundle = build_dataset(cfg["dataset"], seed=cfg["data_seed"],
                                   bias_conflicting_ratio=cfg["bias_conflicting_ratio"],
                                   data_root=self.data_root or cfg.get("data_root"), **cfg["data_options"])
        except LrscopeError:
            return None
        same = all(np.array_equal(getattr(getattr(bundle, split), v).numpy(), self.ds[f"{split}_{v}"].values)
                   for split in ("train", "test") for v in ("y", "b"))
        return bundle if same else None

    @cached_property
    def eval_set(self):
        """(inputs, labels, where): the full test split rebuilt from the config when the rebuilt
        labels match the stored ones, else the stored probe subset (group-balanced)."""
        import torch

        if self.bundle is not None:
            return self.bundle.test.x, self.bundle.test.y, "test"
        x = torch.from_numpy(np.asarray(self.ds.probe_inputs.values))
        return x, torch.from_numpy(self.ds.probe_y.values), "probe subset"


def selective_representation(features: xr.DataArray, model: str | None, signed: bool | None = None) -> xr.DataArray:
    """The non-negative representation that selectivity (CSI, BSI) and activation sparsity are
    computed on: the penultimate activations themselves when the model's are post-ReLU (every
    model but Swin-T), their positive part max(0, h) when they are signed (the model entry's
    `signed_features`: Swin-T's layer-normed, pooled tokens; a network outside the registry, such
    as that of a run recorded from a user's own loop, when its recorded activations have negative
    values). Its `representation` attribute says which. `signed`: what the store says (a plugin
    model's declaration); None: the registry's, or the recorded activations'."""
    from ..train.models import MODELS

    e = MODELS.get(model)
    if signed is None:  # a network outside the registry (a user's own loop): judged by its activations
        signed = e.signed_features if e is not None else bool((features < 0).any())
    if signed:
        out = features.clip(min=0)
        out.attrs = dict(features.attrs, representation="max(0, penultimate activations)")
        return out
    return features.assign_attrs(representation="penultimate activations (post-ReLU)")  # data shared, not copied


NO_BIAS = "the data has no bias attribute"  # why a bias-dependent probe or variable is not defined


def has_bias(ds: xr.Dataset) -> bool:
    """Whether the run's data has a bias attribute (the store's `has_bias`; absent: True). Without
    one, the stored b = y is a placeholder: group, worst-group, BA/BC quantities and BSI are not
    defined."""
    return bool(ds.attrs.get(S.ATTR_HAS_BIAS, True))


def require_bias(ds: xr.Dataset) -> None:
    """MetricError (the probe is recorded as not defined) where the data has no bias attribute."""
    if not has_bias(ds):
        raise M.MetricError(NO_BIAS)


def without_bias(out: xr.Dataset, ds: xr.Dataset, names) -> xr.Dataset:
    """`out` less the variables `names` (and their `_final`) where the data has no bias attribute,
    named in its `not_defined` attribute; `out` as it is otherwise."""
    if has_bias(ds):
        return out
    named = [v for v in names if v in out or f"{v}_final" in out]  # *_final go with their variable, unsaid
    out = out.drop_vars([n for v in named for n in (v, f"{v}_final") if n in out])
    out.attrs["not_defined"] = f"{', '.join(named)}: {NO_BIAS}"
    return out


def _final(da: xr.DataArray, name: str) -> xr.DataArray:
    out = da.isel(snapshot=-1, drop=True) if "snapshot" in da.dims else da
    out.attrs = dict(da.attrs)
    out.attrs["long_name"] = f"{da.attrs.get('long_name', name)} (final)"
    return out


# ------------------------------------------------------------------------------- the probes
def _evaluated(logits: xr.DataArray, sample_dim: str) -> np.ndarray:
    """Snapshot positions whose logits were evaluated (light snapshots leave NaN rows)."""
    return np.flatnonzero(logits.notnull().all((sample_dim, "class")).values)


IN_MEMORY_BYTES = 256 << 20  # arrays up to this size are read once, whole, rather than through dask


def _in_memory(x: xr.DataArray) -> xr.DataArray:
    """`x` read whole when it is small (a few MB of logits: dask's scheduling costs more than the
    work), lazy otherwise."""
    return x.load() if x.nbytes <= IN_MEMORY_BYTES else x


def probe_accuracy(ctx: Context) -> xr.Dataset:
    """Unbiased, worst-group, per-group, BA/BC accuracy per snapshot (test split at full
    snapshots; the group-balanced probe subset at every snapshot), train accuracy."""
    ds = ctx.ds
    test_logits = _in_memory(ds.test_logits)
    full = _evaluated(test_logits, "test_sample")
    out = M.group_accuracy(test_logits.isel(snapshot=full), ds.test_y, ds.test_b, sample_dim="test_sample")
    # computed before reindexing: a lazy reindex splits every chunk (dask PerformanceWarning)
    out = out.compute().reindex(snapshot=ds.snapshot.values)  # NaN at light snapshots
    out["average_accuracy"] = _train_weighted(out.group_accuracy, ds)
    pr = M.group_accuracy(_in_memory(ds.probe_logits), ds.probe_y, ds.probe_b, sample_dim="probe_sample")
    out["probe_accuracy"] = M._attrs(pr.unbiased_accuracy, "accuracy on the group-balanced probe subset", True)
    out["probe_worst_group_accuracy"] = M._attrs(pr.worst_group_accuracy, "worst-group accuracy (probe subset)", True)
    tl = _in_memory(ds.train_logits)
    tr = _evaluated(tl, "train_sample")
    out["train_accuracy"] = M._attrs(M.group_accuracy(tl.isel(snapshot=tr), ds.train_y, ds.train_y,
                                                      sample_dim="train_sample").unbiased_accuracy
                                     .compute().reindex(snapshot=ds.snapshot.values), "train accuracy", True)
    out["train_loss"] = M._attrs(M.per_sample_ce(tl.isel(snapshot=tr), ds.train_y, sample_dim="train_sample")
                                 .mean("train_sample").compute().reindex(snapshot=ds.snapshot.values),
                                 "training loss (whole training set)", False, units="nats",
                                 description="mean cross-entropy of the stored train logits (the whole training set, "
                                             "at the snapshots where it was evaluated; always the final one)")
    for v in ("unbiased_accuracy", "worst_group_accuracy", "average_accuracy", "bc_accuracy", "ba_accuracy",
              "train_accuracy", "train_loss"):
        if v in out:
            out[f"{v}_final"] = _final(out[v], v)
    out = out.drop_vars([c for c in out.coords if c not in ("snapshot", "group")])
    if not has_bias(ds):  # the test accuracy stands; groups of a placeholder b do not
        out = without_bias(out, ds, ("group_accuracy", "worst_group_accuracy", "average_accuracy", "bc_accuracy",
                                     "ba_accuracy", "probe_worst_group_accuracy"))
        out = out.drop_dims("group", errors="ignore")
        for v in ("unbiased_accuracy", "unbiased_accuracy_final"):
            out[v].attrs["note"] = f"{NO_BIAS}: the plain accuracy on the test split"
    return out


def _train_weighted(group_acc: xr.DataArray, ds: xr.Dataset) -> xr.DataArray:
    """The "average accuracy" of the Waterbirds/CelebA literature (e.g. Sagawa et al. 2020, Liu
    et al. 2021): the test accuracy of each (y, b) group weighted by that group's share of the
    *training* set, i.e. the accuracy expected on test data distributed like the (biased) training
    data. Not the paper's unbiased accuracy (every group weighted equally on the y ⟂ b test set)."""
    n_b = int(ds.test_b.values.max()) + 1  # the numbering group_accuracy gave the test groups
    groups = ds.train_y.values.astype(np.int64) * n_b + ds.train_b.values.astype(np.int64)
    counts = np.bincount(groups, minlength=int(group_acc.group.max()) + 1)[group_acc.group.values]
    w = xr.DataArray(counts / counts.sum(), dims=["group"], coords={"group": group_acc.group.values})
    return M._attrs((group_acc * w).sum("group", skipna=False), "average accuracy (training-group weighted)", True,
                    description="test accuracy of each (y, b) group weighted by the group's share of the training "
                                "set (the 'average accuracy' of Waterbirds/CelebA papers); the paper's unbiased "
                                "accuracy weights the groups equally", units="fraction")


def probe_loss_ratio(ctx: Context) -> xr.Dataset:
    ds = ctx.ds
    require_bias(ds)  # bias-conflicting over bias-aligned: nothing conflicts with a placeholder b = y
    if ds.sizes.get("iteration", 0) == 0:
        raise M.MetricError("no training step is committed yet")
    r = M.loss_ratio(ds.bc_loss_sum, ds.ba_loss_sum).compute()
    out = xr.Dataset({"loss_ratio": r})
    # the headline maximum is the paper's: over single minibatches (Fig. 12). The maximum of the
    # epoch running mean is kept beside it: it sits near the same value at every learning rate
    # (docs/replication.md), the per-minibatch maximum tracks unbiased accuracy.
    n_train = ds.sizes["train_sample"]
    window = max(1, -(-n_train // int(ds.attrs["config"]["batch_size"])))
    smooth = r.rolling(iteration=window, min_periods=1).mean()
    out["max_loss_ratio"] = M._attrs(r.max("iteration", skipna=True),
                                     "maximum BC loss ratio of a minibatch over training", None)
    out["max_loss_ratio_smoothed"] = M._attrs(smooth.max("iteration", skipna=True),
                                              "maximum BC loss ratio over training (epoch running mean)", None,
                                              window=window)
    tr = _evaluated(ds.train_logits, "train_sample")
    bc = ds.train_bias_conflicting.values
    if len(tr) and bc.any() and (~bc).any():
        ratio = M.ba_bc_loss_ratio(ds.train_logits.isel(snapshot=tr), ds.train_y, ds.train_bias_conflicting,
                                   sample_dim="train_sample")
        out["ba_bc_loss_ratio"] = ratio.compute().reindex(snapshot=ds.snapshot.values)
    out = out.drop_vars([c for c in out.coords if c not in ("iteration", "snapshot")])
    return out


def probe_compressibility(ctx: Context) -> xr.Dataset:
    f = ctx.features
    q, k = ctx.params.get("q", 2), ctx.params.get("kappa", 0.1)
    comp = M.compressibility(f, feature_dim="neuron", q=q, kappa=k).mean("probe_sample")
    spar = M.sparsity(ctx.selective_features, feature_dim="neuron").mean("probe_sample")
    pq = M.pq_index(f, feature_dim="neuron").mean("probe_sample")
    out = xr.Dataset({
        "activation_compressibility": M._attrs(comp, f"activation ({q:g}, {k:g})-compressibility", True),
        "activation_sparsity": M._attrs(spar, "activation sparsity", True,
                                        representation=ctx.selective_features.attrs["representation"]),
        "activation_pq_index": M._attrs(pq, "activation PQ-index", True),
    })
    # parameters, as Diao et al. (2023) compute the PQ-index: the weight tensors with more than one
    # dimension (linear and convolution weights) of the last checkpoint; biases and normalisation
    # scales/shifts are left out. Globally over all of them, and per tensor.
    named = [(n, w.reshape(-1)) for n, w in ctx.weights]
    pda = xr.DataArray(np.concatenate([w for _, w in named]), dims=["weight"])
    out["param_compressibility"] = M.compressibility(pda, feature_dim="weight", q=q, kappa=k)
    out["param_pq_index"] = M.pq_index(pda, feature_dim="weight")
    out["param_sparsity"] = M.sparsity(pda, feature_dim="weight", tol=1e-8)
    # per layer (one value per parameter tensor, in state-dict order; names in attrs)
    per = [float(M.compressibility(xr.DataArray(w, dims=["weight"]), feature_dim="weight", q=q, kappa=k))
           for _, w in named]
    out["layer_param_compressibility"] = M._attrs(
        xr.DataArray(per, dims=["layer"]), f"parameter ({q:g}, {k:g})-compressibility per layer", True,
        layers=json.dumps([n for n, _ in named]))
    out["layer_param_pq_index"] = M._attrs(
        xr.DataArray([float(M.pq_index(xr.DataArray(w, dims=["weight"]), feature_dim="weight")) for _, w in named],
                     dims=["layer"]), "parameter PQ-index per layer", True)
    for v in ("activation_compressibility", "activation_sparsity", "activation_pq_index"):
        out[f"{v}_final"] = _final(out[v], v)
    return out.drop_vars([c for c in out.coords if c not in ("snapshot",)])


DEVICES = ("cpu", "cuda", "auto")


def check_device(device: str) -> str:
    """`device` checked before any probe runs: cpu, cuda (LrscopeError where torch sees no GPU) or
    auto (cuda when there is one, else cpu); returns the one probes will run on."""
    if device not in DEVICES:
        raise LrscopeError(f"unknown device {device!r}; valid: {', '.join(DEVICES)}")
    if device == "cpu":
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if device == "cuda":
        raise LrscopeError("cuda asked for, but torch sees no CUDA GPU on this machine (use cpu or auto)")
    return "cpu"


@contextlib.contextmanager
def load_aware_threads():
    """Torch's CPU threads for one probe: no more than the cores other processes leave free (the
    1-minute load average, this process's own thread counted as free), at least one. Measured on
    the 2-core machine with other jobs running: the Colored MNIST CNN's pruning took 63 s with 2
    threads and 9 s with 1 (its operations are small; a thread that loses its core stalls every
    parallel region), which is how probing became 17 min in issue #20. The same for numpy's BLAS
    threads: the linear probes' L-BFGS fits took 28 s instead of ~3 s."""
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    try:
        free = (os.cpu_count() or 1) - os.getloadavg()[0] + 1
    except OSError:  # no load average on this platform
        free = before
    n = max(1, min(before, int(free)))
    torch.set_num_threads(n)
    try:
        with threadpool_limits(n):  # numpy's BLAS too (scipy's L-BFGS in the linear probes)
            yield n
    finally:
        torch.set_num_threads(before)


def probe_device(device: str = "auto"):
    """The torch device of the probes that run the network (pruning, attributions)."""
    import torch

    return torch.device(check_device(device))


def probe_representation(ctx: Context) -> xr.Dataset:
    ds = ctx.ds
    f = ctx.features
    kw = dict(sample_dim="probe_sample", feature_dim="neuron")
    csi, bsi = ctx.selectivity  # on the non-negative representation
    out = xr.Dataset({
        "csi": csi,
        "bsi": bsi,
        "csi_mean": M._attrs(csi.mean("neuron"), "average CSI (core-feature utilisation)", True),
        "bsi_mean": M._attrs(bsi.mean("neuron"), "average BSI (spurious-feature utilisation)", False),
        "class_separation": M.class_separation(f, ds.probe_y.values, **kw),
    })
    out = out.merge(M.neuron_survival(csi, bsi))
    for v in ("csi_mean", "bsi_mean", "class_separation"):
        out[f"{v}_final"] = _final(out[v], v)
    out = out.drop_vars([c for c in out.coords if c not in ("snapshot",)])
    # BSI and what compares CSI with it (class- vs bias-dominant neurons): not without a bias attribute
    return without_bias(out, ds, ("bsi", "bsi_mean", "class_dominant_fraction", "class_neuron_survival",
                                  "bias_neuron_survival"))


def probe_feature_quality(ctx: Context) -> xr.Dataset:
    ds = ctx.ds
    out = feature_probe(ctx.features, ds.probe_y.values, ds.probe_b.values,
                        sample_dim="probe_sample", feature_dim="neuron")
    for v in ("core_probe_error", "spurious_probe_error"):
        out[f"{v}_final"] = _final(out[v], v)
    out = out.drop_vars([c for c in out.coords if c not in ("snapshot",)])
    return without_bias(out, ds, ("spurious_probe_error",))


def probe_pruning(ctx: Context) -> xr.Dataset:
    """Pruning curves of the last checkpoint for each kind (structured under each asked criterion,
    the default first; magnitude; column), their κ-prunabilities, the mean pruned accuracy, and the
    number of evaluation samples with each accuracy's binomial standard error. Every pruned network
    is evaluated in one pass over the samples (probe/pruning.py:pruned_correct)."""
    import torch

    from .pruning import (
        CRITERION_WORDS,
        DEFAULT_CRITERION,
        accuracy_se,
        check_criteria,
        pruned_correct,
        structured_keep,
    )

    x, y, where = ctx.eval_set
    cap = ctx.params.get("eval_samples")
    if cap and len(y) > cap:  # a group-balanced subset: the accuracies' SEs grow as 1/sqrt(n)
        b = (ctx.ds.test_b if where == "test" else ctx.ds.probe_b).values
        pos = torch.from_numpy(balanced_subset(y.numpy(), b, cap))
        x, y, where = x[pos], y[pos], f"{where} (group-balanced subset)"
    reason = plugin_pruning_reason(ctx.model, x[:2])
    if reason is not None:
        raise M.MetricError(reason)
    dev = ctx.torch_device
    model, x, y = ctx.model.to(dev), x.to(dev), y.to(dev)
    kappas = [float(k) for k in ctx.params.get("kappas", KAPPAS)]
    criteria = check_criteria(ctx.params.get("criterion", DEFAULT_CRITERION))
    defined = []
    for c in criteria:
        try:
            structured_keep(model, 0.5, c)
            defined.append(c)
        except M.MetricError:
            pass
    specs = [("structured", c) for c in defined] + [("magnitude", None), ("column", None)]
    try:
        correct = pruned_correct(model, x, y, specs, kappas)
    finally:
        ctx.model.cpu()
    n = len(y)
    acc = correct / n
    se = accuracy_se(acc, n)
    coords = {"kappa": kappas}
    where_attrs = {"evaluated_on": where, "evaluated_samples": n}
    out = xr.Dataset()
    for kind in KINDS:
        crit = DEFAULT_CRITERION if kind == "structured" else None
        i = specs.index((kind, crit))
        words = f", {crit} criterion" if crit else ""
        curve = M._attrs(xr.DataArray(acc[i], dims=["kappa"], coords=coords),
                         f"accuracy after {kind} pruning{words}", True, kind=kind, **where_attrs,
                         **({"criterion": crit} if crit else {}))
        out[f"pruning_{kind}"] = curve
        out[f"pruning_{kind}_se"] = M._attrs(xr.DataArray(se[i], dims=["kappa"], coords=coords),
                                             f"standard error of the {kind} pruning curve", None, **where_attrs)
        p = prunability(curve)
        p.attrs["long_name"] = f"κ-prunability ({kind}{words})"
        out["prunability" if kind == "structured" else f"prunability_{kind}"] = p
        if kind == "structured":
            out["pruned_accuracy"] = pruned_accuracy(curve)
            out["prunability_sum"] = prunability_sum(curve)
    # every asked criterion along `criterion` (NaN where the network does not define it)
    by = np.full((len(criteria), len(kappas)), np.nan)
    for j, c in enumerate(criteria):
        if c in defined:
            by[j] = acc[specs.index(("structured", c))]
    ccoords = {"criterion": criteria, "kappa": kappas}
    undefined = [c for c in criteria if c not in defined]
    crit_attrs = {**where_attrs, "criteria": "; ".join(f"{c}: {CRITERION_WORDS[c]}" for c in criteria),
                  **({"undefined": ", ".join(undefined)} if undefined else {})}
    curves = M._attrs(xr.DataArray(by, dims=["criterion", "kappa"], coords=ccoords),
                      "accuracy after structured pruning, per criterion", True, kind="structured", **crit_attrs)
    out["pruning_by_criterion"] = curves
    out["pruning_by_criterion_se"] = M._attrs(xr.DataArray(accuracy_se(by, n), dims=["criterion", "kappa"],
                                                           coords=ccoords),
                                              "standard error of the structured pruning curves", None, **where_attrs)
    pc = prunability(curves)
    pc.attrs["long_name"] = "κ-prunability (structured), per criterion"
    out["prunability_by_criterion"] = pc
    out["pruning_samples"] = M._attrs(xr.DataArray(n), "pruning evaluation samples", None, evaluated_on=where)
    out.attrs["evaluated_on"] = where
    return out


def plugin_pruning_reason(model, x) -> str | None:
    """Why pruning is not defined for a plugin model (a `TappedNet`), or None where it is: structured
    pruning keeps the head whole, so the module features_at names must be a torch.nn.Linear (else
    the pruned units would include the classes); there must be a Linear or Conv2d layer besides it;
    and every such layer must be called as a module in forward (pruned units are masked through
    forward hooks on the modules: a weight used directly, as nn.MultiheadAttention uses its
    out_proj, would escape them). Built-in models: None."""
    import torch

    from ..train.data import as_model_input
    from ..train.tapped import TappedNet
    from .pruning import _prunable_layers

    if not isinstance(model, TappedNet):
        return None
    name = f"plugin model with features_at {model.features_at!r}"
    if model.head is None:
        return (f"{name}: that module is a {type(model.tap).__name__}, not a torch.nn.Linear; structured pruning "
                f"keeps the classifier whole and needs it to be one")
    layers = _prunable_layers(model)
    if not layers:
        return f"{name}: no Linear or Conv2d layer besides the classifier to prune"
    called: set[str] = set()
    hooks = [m.register_forward_hook(lambda mod, i, o, n=n: called.add(n)) for n, m in layers]
    try:
        with torch.inference_mode():
            model.eval()(as_model_input(x[:2]))
    finally:
        for h in hooks:
            h.remove()
    missed = [n.removeprefix("net.") for n, _ in layers if n not in called]
    if missed:
        return (f"{name}: layer(s) {', '.join(missed[:4])} are not called as modules in forward (their weights are "
                f"used directly), so their pruned units cannot be masked")
    return None


def balanced_subset(y: np.ndarray, b: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Up to `n` sorted positions taken in turn from each (y, b) group, each group in a fixed random
    order: as group-balanced as the groups' sizes allow."""
    gen = np.random.default_rng([seed, 2020])
    groups = [gen.permutation(np.flatnonzero((y == yy) & (b == bb)))
              for yy, bb in sorted(set(zip(y.tolist(), b.tolist())))]
    out: list[int] = []
    for k in range(max((len(g) for g in groups), default=0)):
        for g in groups:
            if k < len(g) and len(out) < n:
                out.append(int(g[k]))
    return np.array(sorted(out), dtype=int)


def probe_importance(ctx: Context) -> xr.Dataset:
    """Importance weights 1 - p(y|x) of the training samples (Springer et al.): per epoch from the
    minibatch log (probe/importance.py: Gini over all / bias-aligned / bias-conflicting samples,
    the bias-conflicting share, Lorenz curves at epochs from the first to the last complete one),
    and per snapshot from the stored train logits where the train split was evaluated (its Gini,
    and Lorenz curves at the first and the last such snapshot)."""
    from .importance import epoch_importance

    ds = ctx.ds
    tl = ds.train_logits.compute()
    has = tl.notnull().all(("train_sample", "class"))
    w = M.importance_weights(tl, ds.train_y)
    g = M.gini(w.fillna(0), sample_dim="train_sample").where(has)
    last = int(np.flatnonzero(has.values)[-1]) if has.any() else -1
    out = xr.Dataset({"importance_gini": g})
    if last >= 0:
        first = int(np.flatnonzero(has.values)[0])
        lz = M.lorenz_curve(w.isel(snapshot=[first, last]), sample_dim="train_sample")
        # lorenz_at 0 / 1: the first / last snapshot with train logits (the same one when only the
        # final snapshot has them); which snapshots they are is in lorenz_snapshot
        out["importance_lorenz"] = lz.rename(snapshot="lorenz_at").assign_coords(lorenz_at=[0, 1])
        out["lorenz_snapshot"] = xr.DataArray([first, last], dims=["lorenz_at"])
    out = out.drop_vars([c for c in out.coords if c not in ("snapshot", "fraction", "lorenz_at")])
    for v in ("importance_gini", "importance_lorenz"):  # labelled with what they are computed from
        if v in out:
            out[v].attrs = dict(S.DESCRIPTIONS[v])
    out = out.merge(epoch_importance(ds), combine_attrs="override")
    if not has_bias(ds):  # the subsets' bias-aligned is every sample, bias-conflicting none
        out = without_bias(out, ds, ("importance_epoch_bc_share",))
        out.attrs["not_defined"] += " (subset: bias-aligned is every sample, bias-conflicting none)"
    return out


def _checkpoints(ctx: Context) -> list[int]:
    n = ctx.ds.sizes["checkpoint"]
    spec = parse_checkpoints(ctx.params.get("checkpoints", "first,last"))
    if spec == ["all"]:
        return list(range(n))
    out = []
    for part in spec:
        k = 0 if part == "first" else n - 1 if part == "last" else part
        if not -n <= k < n:
            raise M.MetricError(f"checkpoint {part} out of range (the run has {n})")
        out.append(k % n)
    return sorted(set(out))


def attribution_inputs(ctx: Context, x, y) -> tuple:
    """Inputs (the store's layout, sample first) and their labels as the tensors the attributions
    probe attributes, on ctx's device."""
    import torch

    from ..train.data import as_model_input

    dev = ctx.torch_device
    return (as_model_input(torch.from_numpy(np.asarray(x))).to(dev),
            torch.from_numpy(np.asarray(y, dtype=np.int64)).to(dev))


def attribution_maps(ctx: Context, model, x, y, method: str, in_dims: list[str]) -> xr.DataArray:
    """The attributions probe's maps (attr_sample, *in_dims) of `x` for the classes `y`
    (`attribution_inputs`) by `model` with the probe's parameters (ig_steps): the probe on its
    probe inputs at each chosen checkpoint, the explorer on one training sample at the last one
    (`attributed_checkpoints`)."""
    from .attribution import attributions

    return attributions(model, x, y, method=method, n_steps=int(ctx.params.get("ig_steps", 32)),
                        sample_dim="attr_sample", input_dims=in_dims)


def attributed_checkpoints(ctx: Context) -> list[int]:
    """The checkpoint positions the attributions probe attributes (its `checkpoints` parameter)."""
    return _checkpoints(ctx)


def probe_attributions(ctx: Context) -> xr.Dataset:
    """Integrated Gradients and DeepLift on the probe inputs (up to 256, group-balanced) at the
    chosen checkpoints: attribution share per input region, normalised entropy, and the maps of
    up to 16 samples picked evenly from every (y, b) group (bias-aligned and bias-conflicting
    alike) at the last chosen checkpoint, with their labels, for the report and the explorer."""
    from .attribution import (
        METHODS,
        attribution_entropy,
        attribution_rule,
        background_share,
        region_shares,
    )

    ds = ctx.ds
    n = min(ds.sizes["probe_sample"], int(ctx.params.get("attr_samples", 256)))
    pos = np.linspace(0, ds.sizes["probe_sample"] - 1, n).round().astype(int)
    x, y = attribution_inputs(ctx, ds.probe_inputs.isel(probe_sample=pos).values, ds.probe_y.values[pos])
    in_dims = list(ds.probe_inputs.dims[1:])
    cks = _checkpoints(ctx)
    picks = _map_picks(ds.probe_y.values[pos], ds.probe_b.values[pos], 16)
    # attr_checkpoint counts the attributed checkpoints (0 = the first chosen, -1 = the last), so a
    # sweep's runs line up however many checkpoints each has; which checkpoint (position, iteration)
    # each one is rides along as coordinates
    out = xr.Dataset(coords={"attr_checkpoint": np.arange(len(cks)),
                             "attr_checkpoint_position": ("attr_checkpoint", np.asarray(cks, dtype=np.int64)),
                             "attr_iteration": ("attr_checkpoint", ds.checkpoint_iteration.values[cks])})
    short = {"integrated_gradients": "ig", "deeplift": "deeplift"}
    maps = {}
    shares = {method: {} for method in METHODS}
    ents = {method: [] for method in METHODS}
    regions = ds.regions.load() if "regions" in ds else None
    dev = ctx.torch_device
    masks, seg_note = _foreground_masks(ctx, x, in_dims, dev)
    bg = {method: [] for method in METHODS}
    for k in cks:
        model = ctx.load_model(k).to(dev)  # once per checkpoint, for both methods
        for method in METHODS:
            da_ = attribution_maps(ctx, model, x, y, method, in_dims)
            ents[method].append(float(attribution_entropy(da_, sample_dim="attr_sample")))
            if masks is not None:
                bg[method].append(float(background_share(da_, masks, sample_dim="attr_sample")))
            if regions is not None:
                per = region_shares(da_, regions, sample_dim="attr_sample").values
                for r, name in enumerate(regions.region.values):
                    shares[method].setdefault(str(name), []).append(float(per[r]))
            maps[method] = da_.isel(attr_sample=picks)
    rule = {method: {"computed_as": attribution_rule(model, method, int(ctx.params.get("ig_steps", 32)))}
            for method in METHODS}
    for method in METHODS:
        m = short[method]
        out[f"{m}_entropy"] = M._attrs(xr.DataArray(ents[method], dims=["attr_checkpoint"]),
                                       f"{method} normalised attribution entropy", None, **rule[method])
        for name, vals in shares[method].items():
            out[f"{m}_{name}_share"] = M._attrs(xr.DataArray(vals, dims=["attr_checkpoint"]),
                                                f"{method} attribution share on {name} inputs",
                                                True if name == "core" else None,
                                                description="share of the absolute attribution mass on these inputs "
                                                            "(raw: a region of many inputs gets much by count)")
        if shares[method]:  # size-normalised: mass per input of each region, the regions' values summing to 1
            names = list(shares[method])
            size = regions.sum([d for d in regions.dims if d != "region"]).sel(region=names).values.astype(float)
            raw = np.array([shares[method][nm] for nm in names])  # (region, attr_checkpoint)
            per = raw / np.where(size > 0, size, np.nan)[:, None]
            per = per / np.nansum(per, 0, keepdims=True)
            for r, name in enumerate(names):
                out[f"{m}_{name}_share_per_input"] = M._attrs(
                    xr.DataArray(per[r], dims=["attr_checkpoint"]),
                    f"{method} attribution share on {name} inputs, size-normalised", True if name == "core" else None,
                    description=f"mean absolute attribution per {name} input over the regions' means (the regions' "
                                f"values sum to 1): {int(size[r])} inputs; independent of how many inputs each "
                                "region has")
        if masks is not None:
            out[f"{m}_background_share"] = M._attrs(
                xr.DataArray(bg[method], dims=["attr_checkpoint"]), f"{method} attribution share on background",
                False, description="the paper's background attribution percentage (Fig. 10) as a fraction: share of "
                                   "the absolute attribution mass on the pixels the segmenter calls background "
                                   "(all channels), per input, mean over the attributed inputs",
                units="fraction", **seg_note)
        out[f"{m}_maps"] = M._attrs(maps[method].rename(attr_sample="map_sample"),
                                    f"{method} maps (samples from every group, last checkpoint)", None, **rule[method])
    sel = pos[picks]
    out = out.assign_coords(map_sample_index=("map_sample", sel), map_y=("map_sample", ds.probe_y.values[sel]),
                            map_b=("map_sample", ds.probe_b.values[sel]),
                            map_bias_conflicting=("map_sample", ds.probe_y.values[sel] != ds.probe_b.values[sel]))
    if masks is not None:
        out["foreground_fraction"] = M._attrs(xr.DataArray(float(masks.mean())), "foreground fraction", None,
                                              description="share of the attributed inputs' pixels the segmenter "
                                                          "calls foreground (any VOC class but background), mean "
                                                          "over the inputs", units="fraction", **seg_note)
        out["foreground_masks"] = M._attrs(masks.isel(attr_sample=picks).rename(attr_sample="map_sample"),
                                           "foreground masks of the map samples", None,
                                           description="True = foreground (the segmenter's class is not background)",
                                           units="boolean", **seg_note)
    elif seg_note:
        out.attrs.update(seg_note)
    return out


def _foreground_masks(ctx: Context, x, in_dims: list[str], dev) -> tuple[xr.DataArray | None, dict]:
    """The segmenter's foreground masks (attr_sample, height, width) of the attributed inputs, when
    the probe has segmenter_weights and the inputs are images (else None, and a note saying why
    when weights were given), and the attrs that say how they were made."""
    path = ctx.params.get("segmenter_weights")
    if path is None:
        return None, {}
    from .segment import DEFAULT_SEGMENTER, RULE, file_digest, foreground_masks_torch, load_segmenter

    arch = ctx.params.get("segmenter", DEFAULT_SEGMENTER)
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        return None, {"background_share": f"not computed: the inputs (shape {tuple(x.shape[1:])}) are not images"}
    seg = load_segmenter(path, arch).to(dev)
    m = foreground_masks_torch(seg, x).cpu().numpy()
    note = {"segmenter": arch, "segmenter_sha256": file_digest(path), "segmented_as": RULE.format(arch=arch)}
    return xr.DataArray(m, dims=["attr_sample", *in_dims[1:]]), note


def _map_picks(y: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    """Up to `n` positions, taken in turn from each (y, b) group (in group order), so the maps show
    bias-aligned and bias-conflicting samples of every class."""
    groups = [np.flatnonzero((y == yy) & (b == bb)) for yy, bb in sorted(set(zip(y.tolist(), b.tolist())))]
    out = []
    for k in range(max((len(g) for g in groups), default=0)):
        for g in groups:
            if k < len(g) and len(out) < n:
                out.append(int(g[k]))
    return np.array(sorted(out), dtype=int)


# ------------------------------------------------------------------------------- runner
def _provenance(ctx: Context, name: str) -> dict:
    """What a result is computed from: the run as the probe's view of it shows it (its committed
    lengths and status when it was opened; a run still training goes on past them), the
    parameters and the probe's definition."""
    out = {"probe": name, "probe_format": PROBES[name].format, "lrscope_version": __version__,
           "params": json.dumps(_provenance_params(ctx.params, name), sort_keys=True),
           "source_committed": json.dumps(ctx.ds.attrs["committed"], sort_keys=True),
           "source_status": ctx.ds.attrs["status"]}
    if PROBES[name].plugin:  # a plugin probe: its distribution, and its source by content (an edit recomputes)
        out["probe_plugin"] = PROBES[name].plugin
        out["probe_source_sha256"] = str(source_sha256(PROBES[name]))
    return out


SEGMENTER_PARAMS = ("segmenter_weights", "segmenter")


def _provenance_params(params: dict, name: str) -> dict:
    """The parameters a result is computed from: the segmenter's only for the probes that take
    them, and its weights file by its content (sha256), not its path."""
    out = {k: v for k, v in params.items() if k not in SEGMENTER_PARAMS or k in PROBES[name].params}
    if "segmenter_weights" in out:
        from .segment import file_digest

        out["segmenter_weights"] = "sha256:" + file_digest(out["segmenter_weights"])
    return out


def check_names(names) -> list[str]:
    """The probes to compute: `names`, or every default probe (specialist ones, such as
    neuron_resets, are computed only when asked for by name)."""
    from .registry import DEFAULT_PROBES

    names = list(DEFAULT_PROBES) if names is None else list(names)
    unknown = [n for n in names if n not in PROBES]
    if unknown:
        raise LrscopeError(f"unknown probe(s) {', '.join(unknown)}; valid: {', '.join(PROBES)}")
    return names


def check_plugins(runs, names, allow_changed: bool = False) -> None:
    """Before any probe is computed: PluginChanged (one line, naming the import path and both
    hashes) for a run whose plugin model's source changed since training, when a probe that runs
    the network is asked for, unless `allow_changed`. A plugin that is missing here is no error:
    the probes that run the network are then "not defined" with that reason, the others computed
    from the stored arrays."""
    if allow_changed or not any(PROBES[n].runs_model for n in names):
        return
    for path in runs:
        try:
            attrs = open_store(path).attrs.asdict()
        except LrscopeError:
            continue  # the runner reports unreadable stores
        try:
            check_run(attrs, "model")
        except PluginChanged as e:
            raise PluginChanged(f"{Path(path).name}: {e}") from None
        except PluginError:
            pass


def compute_run(path, names=None, *, force: bool = False, data_root: str | None = None, params=None,
                log: Callable[[str], None] | None = None, device: str = "auto",
                progress: Callable[[str, str, bool], None] | None = None,
                allow_changed_plugins: bool = False) -> dict[str, str]:
    """Compute the named probes (default: every default probe) for one run store; returns name -> outcome.

    Each result is written by a background thread while the next probe computes (one writer,
    in order; every pending write has finished when this returns or raises). Dask arrays of the
    run are computed on local threads (also inside a dask.distributed task: the run is the task).
    `device`: where the probes that run the network run (cpu | cuda | auto: cuda when there is
    one), recorded in each result's `device` attribute (not part of its provenance: a result
    computed on either is up to date). `progress(run, probe, done)` is called as each probe
    starts (done False) and ends (done True, also when skipped). `allow_changed_plugins`: rebuild a
    plugin model whose source changed since training (else `check_plugins` refuses)."""
    path = Path(path)
    names = check_names(names)
    params = check_params(params)
    device = check_device(device)
    check_plugins([path], names, allow_changed_plugins)
    with _probe_lock(path):  # one lrprobe at a time per run: concurrent rewrites would race
        return _compute_locked(path, names, force, data_root, params, log, device, progress, allow_changed_plugins)


@contextlib.contextmanager
def _probe_lock(path: Path):
    """An exclusive flock on the store's folder itself (no lock file: probing writes nothing
    beside the store); a second lrprobe on the same run waits for the first."""
    import fcntl

    open_store(path)  # validates first: a path that is not a store gets its one-line error
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def check_params(params) -> dict:
    """Probe parameters checked before any probe runs (a bad one must not leave the others rewritten)."""
    params = dict(params or {})
    unknown = set(params) - PARAMS
    if unknown:
        raise LrscopeError(f"unknown probe parameter(s) {', '.join(sorted(unknown))}; "
                           f"valid: {', '.join(sorted(PARAMS))}")
    for key in ("kappa", "q"):
        if key in params:
            v = params[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
                raise LrscopeError(f"probe parameter {key} must be a number, got {v!r}")
    if "kappa" in params and not 0 <= params["kappa"] <= 1:
        raise LrscopeError(f"kappa must be in [0, 1], got {params['kappa']}")
    if "q" in params and not params["q"] > 1:
        raise LrscopeError(f"q must be > 1, got {params['q']}")
    for key, lo, hi in (("attr_samples", 1, 1 << 16), ("ig_steps", 1, 4096), ("eval_samples", 1, 1 << 31),
                        ("reset_checkpoints", 2, 4096), ("reset_neurons", 1, 1 << 16)):
        if key in params:
            v = params[key]
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise LrscopeError(f"probe parameter {key} must be an integer in [{lo}, {hi}], got {v!r}")
    if "checkpoints" in params:
        parse_checkpoints(params["checkpoints"])
    if "criterion" in params:
        from .pruning import check_criteria

        check_criteria(params["criterion"])
    if "segmenter" in params and "segmenter_weights" not in params:
        raise LrscopeError("--segmenter needs --segmenter-weights FILE (a local state dict; never downloaded)")
    if "segmenter_weights" in params:
        from .segment import DEFAULT_SEGMENTER, check_segmenter_weights

        check_segmenter_weights(params["segmenter_weights"], params.get("segmenter", DEFAULT_SEGMENTER))
    if "kappas" in params:
        ks = params["kappas"]
        if not isinstance(ks, (list, tuple)) or not ks or not all(
                isinstance(k, (int, float)) and not isinstance(k, bool) and 0 <= k <= 1 for k in ks):
            raise LrscopeError(f"kappas must be a non-empty list of numbers in [0, 1], got {ks!r}")
    return params


def parse_checkpoints(spec) -> list[str | int]:
    """'first,last' | 'all' | comma-separated checkpoint positions (negative counts from the end)."""
    text = str(spec).strip()
    if text == "all":
        return ["all"]
    out: list[str | int] = []
    for part in text.split(","):
        part = part.strip()
        if part in ("first", "last"):
            out.append(part)
            continue
        try:
            out.append(int(part))
        except ValueError:
            raise LrscopeError(f"checkpoints: expected first, last, all or integers, got {part!r}") from None
    if not out:
        raise LrscopeError("checkpoints: empty list")
    return out


def _compute_locked(path: Path, names, force, data_root, params, log, device="auto", progress=None,
                    allow_changed_plugins: bool = False) -> dict[str, str]:
    from concurrent.futures import ThreadPoolExecutor

    import dask
    import dask.threaded

    root = open_store(path)
    ds = open_run(path, probes=False)  # one view of the run: every probe is computed from it
    ctx = Context(path, ds, data_root, params, device, allow_changed_plugins=allow_changed_plugins)
    outcomes: dict[str, str] = {}
    run = ds.attrs.get("run_id", path.name)
    tell = progress or (lambda *a: None)
    if ds.sizes.get("snapshot", 0) == 0:
        for n in names:
            tell(run, n, True)
        return {n: "skipped (no snapshots yet)" for n in names}
    diverged = ds.attrs["status"] == S.STATUS_DIVERGED
    writes: list = []

    def written(name: str, res: xr.Dataset) -> None:
        write_probe(path, name, res)
        outcomes[name] = f"computed in {res.attrs['seconds']:.2f}s"
        if res.attrs.get("not_defined"):  # the rest computed; these variables are not
            outcomes[name] += f"; not defined: {res.attrs['not_defined']}"
        if log:
            log(f"{path.name}: {name} {outcomes[name]}")

    # a callable scheduler: dask then neither looks for a distributed client nor imports distributed
    with ThreadPoolExecutor(1, thread_name_prefix="lrscope-probe-writer") as writer, \
            dask.config.set(scheduler=dask.threaded.get):
        try:
            for name in names:
                prov = _provenance(ctx, name)
                old = stored_provenance(root, name)
                if not force and old is not None and all(old.get(k) == v for k, v in prov.items()):
                    outcomes[name] = "up to date"
                    tell(run, name, True)
                    continue
                tell(run, name, False)
                ctx.used_device = False
                t0 = time.perf_counter()
                try:
                    with load_aware_threads() as threads:
                        res = PROBES[name](ctx).compute()  # read everything here, where errors are caught
                except (M.MetricError, PluginError, ModelNotStored) as e:  # not rebuildable here
                    outcomes[name] = f"not defined: {e}"
                    tell(run, name, True)
                    continue
                except LrscopeError:
                    raise
                except Exception as e:  # unreadable chunks, codec errors: a damaged store, said in one line
                    if os.environ.get("LRSCOPE_DEBUG"):
                        raise
                    if diverged:  # non-finite weights and logits: a result, not a damaged store
                        outcomes[name] = f"not defined: the run diverged ({type(e).__name__}: {e})"
                        tell(run, name, True)
                        continue
                    raise StoreError(f"{path}: probe {name!r} failed reading the store ({type(e).__name__}: {e}); "
                                     "corrupted or truncated store? (LRSCOPE_DEBUG=1 shows the traceback)") from None
                res.attrs.update(prov)
                res.attrs["seconds"] = round(time.perf_counter() - t0, 4)
                if ctx.used_device:
                    res.attrs["device"] = str(ctx.torch_device)
                res.attrs["cpu_threads"] = threads
                writes.append(writer.submit(written, name, res))
                tell(run, name, True)
        finally:
            try:
                for w in writes:  # the results computed so far are stored, whatever stopped the loop
                    w.result()
            except OSError as e:  # disk full, store removed: the older results keep their marks
                raise LrscopeError(f"{path}: writing a probe result failed ({e.strerror or e}); "
                                   "fix the cause and run lrprobe compute again") from None
    return {n: outcomes[n] for n in names}  # in the order asked (writes finish out of it)


def _probe_worker(path: str, names, force: bool, data_root, params, device, allow_changed_plugins: bool,
                  threads: int) -> tuple[str, dict[str, str]]:
    if threads:
        import torch

        torch.set_num_threads(threads)
    return path, compute_run(path, names, force=force, data_root=data_root, params=params, device=device,
                             allow_changed_plugins=allow_changed_plugins)


def _ignore_sigint() -> None:
    """Pool workers leave Ctrl-C to the parent, which stops them (a probe is marked complete only
    once written, so one cut short is recomputed next time)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def compute_paths(paths, names=None, *, force=False, data_root=None, progress=True, params=None,
                  log=None, workers: int = 1, scheduler=None, device: str = "auto",
                  allow_changed_plugins: bool = False) -> dict[str, dict[str, str]]:
    """Probe every run store under `paths`: one after another, on `workers` local processes, or
    with `scheduler` one dask.distributed task per run ("local" or an address; see
    `lrscope.parallel.dask_client`). Returns path -> probe name -> outcome.

    `progress`: a bar on stderr counting (run, probe) pairs, with the rate and an ETA; probing in
    turn, it names the run and the probe being computed, and moves as each probe ends; with
    workers or a scheduler it moves as each run ends."""
    from ..store.reader import find_runs

    runs = find_runs(paths)
    names = check_names(names)
    params = check_params(params)
    device = check_device(device)
    if workers < 1:
        raise LrscopeError(f"workers must be >= 1, got {workers}")
    check_plugins(runs, names, allow_changed_plugins)  # before anything is computed
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(runs) * len(names), desc="probing", unit="probe", mininterval=0,
                   bar_format="{desc}: {n_fmt}/{total_fmt} probes |{bar:20}| {elapsed}<{remaining} ETA")
    results: dict[str, dict[str, str]] = {}
    args = [(str(p), names, force, data_root, params, device, allow_changed_plugins) for p in runs]
    position = {}

    def tell(run: str, name: str, done: bool) -> None:
        if bar is None:
            return
        k = position.setdefault(run, len(position) + 1)
        if done:
            bar.update()
        else:
            bar.set_description_str(f"run {k}/{len(runs)} {run}: {name}")

    try:
        if scheduler is not None:
            threads = worker_threads(workers, scheduler)
            done = dask_map(_probe_worker, [(f"lrprobe-{Path(a[0]).name}", a + (threads,)) for a in args],
                            scheduler, workers)
        elif workers > 1 and len(runs) > 1:
            done = _pool_map(args, workers)
        else:
            done = ((p, compute_run(p, names, force=force, data_root=data_root, params=params, log=log,
                                    device=device, progress=tell, allow_changed_plugins=allow_changed_plugins))
                    for p, *_ in args)
        sequential = scheduler is None and not (workers > 1 and len(runs) > 1)
        for path, outcome in done:
            results[path] = outcome
            if bar is not None and not sequential:
                bar.set_description_str(f"{len(results)}/{len(runs)} runs, last {Path(path).name}")
                bar.update(len(names))
    finally:
        if bar is not None:
            bar.close()
    return {str(p): results[str(p)] for p in runs}


def _pool_map(args: list[tuple], workers: int):
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    threads = worker_threads(workers)
    pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_ignore_sigint)
    try:
        futs = [pool.submit(_probe_worker, *a, threads) for a in args]
        for f in as_completed(futs):
            yield f.result()
    except BaseException:  # an error or Ctrl-C: stop the others too, without waiting for them
        for p in pool_processes(pool):
            p.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
