"""What a probe may ask for about one run (`Context`), and what the probes share: the
non-negative representation, the bias rules, final values, the torch device and thread policy."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import xarray as xr

from ..errors import LrscopeError, StoreError
from ..store import schema as S
from ..store.reader import open_store
from ..train.plugins import check_run, is_import_path
from . import metrics as M


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

    def param(self, name: str):
        """The probe parameter `name`: as given (`params`), else its declared default."""
        if name in self.params:
            return self.params[name]
        from .registry import PARAM_DECLS

        return PARAM_DECLS[name].default

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
                                   data_root=self.data_root or cfg.get("data_root"),
                                   val_fraction=cfg.get("val_fraction", 0.0),  # absent: a store of before it
                                   **cfg["data_options"])
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
    """`out` less the variables `names` (and their `final_value`) where the data has no bias attribute,
    named in its `not_defined` attribute; `out` as it is otherwise."""
    if has_bias(ds):
        return out
    named = [v for v in names if v in out or f"{v}_final" in out]  # *final_value go with their variable, unsaid
    out = out.drop_vars([n for v in named for n in (v, f"{v}_final") if n in out])
    out.attrs["not_defined"] = f"{', '.join(named)}: {NO_BIAS}"
    return out


def final_value(da: xr.DataArray, name: str) -> xr.DataArray:
    out = da.isel(snapshot=-1, drop=True) if "snapshot" in da.dims else da
    out.attrs = dict(da.attrs)
    out.attrs["long_name"] = f"{da.attrs.get('long_name', name)} (final)"
    return out


def evaluated_rows(logits: xr.DataArray, sample_dim: str) -> np.ndarray:
    """Snapshot positions whose logits were evaluated (light snapshots leave NaN rows)."""
    return np.flatnonzero(logits.notnull().all((sample_dim, "class")).values)


IN_MEMORY_BYTES = 256 << 20  # arrays up to this size are read once, whole, rather than through dask


def in_memory(x: xr.DataArray) -> xr.DataArray:
    """`x` read whole when it is small (a few MB of logits: dask's scheduling costs more than the
    work), lazy otherwise."""
    return x.load() if x.nbytes <= IN_MEMORY_BYTES else x


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
