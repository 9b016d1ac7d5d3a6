"""Rebuild models from run stores: config + checkpoint arrays -> torch.nn.Module (no pickle)."""

from __future__ import annotations

import os

import numpy as np
import torch
import xarray as xr
from torch import nn

from ..errors import ConfigError, LrscopeError, ModelNotStored, PluginError, StoreError
from ..store import schema as S
from ..store.reader import check_array, check_node, open_store
from .config import RunConfig
from .models import create_model
from .plugins import check_run, is_import_path
from .tapped import TappedNet, as_feature_net


def fcn_widths(cfg: RunConfig, model_info: dict | None = None) -> tuple[list[int] | None, str]:
    """The hidden widths `cfg`'s FCN is built with, and why: --widths when given; for a stored run,
    the widths its model_info recorded (stores written before widths were recorded: None, the FCN's
    own default by input shape, as they were trained); for a new run, the paper's FCN for the dataset
    (Barsbey et al. 2025: 3x200 on the synthetic sets, section 4 and Fig. 3; 2x1024 on Colored and
    Double MNIST, 2x2048 on MNIST-CIFAR and Corrupted CIFAR-10, supplement C), else None."""
    if cfg.widths is not None:
        return list(cfg.widths), "--widths"
    if cfg.model != "fcn":
        return None, ""
    if model_info is not None:
        stored = model_info.get("widths")
        return (None, "") if stored is None else (list(stored), "as stored")
    from .recipes import DATASETS

    entry = DATASETS.get(cfg.dataset)
    if entry is None or entry.fcn_widths is None:
        return None, ""
    return list(entry.fcn_widths), f"the paper's FCN for {cfg.dataset} (Barsbey et al. 2025)"


def build_model(cfg: RunConfig, input_shape, num_classes: int, model_info: dict | None = None) -> nn.Module:
    """The run's network: a registry model, or a plugin model seen through the registry's
    interface (`TappedNet` on `cfg.features_at`, unless the plugin returns a FeatureNet itself).
    `model_info`: a stored run's (its recorded FCN widths, `fcn_widths`); None for a new run."""
    kw = dict(cfg.model_options)
    widths, _ = fcn_widths(cfg, model_info)
    if widths is not None:
        kw["widths"] = widths
    if not is_import_path(cfg.model):
        return create_model(cfg.model, input_shape=tuple(input_shape), num_classes=num_classes, **kw)
    try:
        model = create_model(cfg.model, input_shape=tuple(input_shape), num_classes=num_classes, **kw)
    except LrscopeError:
        raise
    except Exception as e:  # noqa: BLE001 - the plugin's own failure, in one line
        text = str(e).strip().splitlines()
        raise PluginError(f"plugin model {cfg.model}: building it failed ({type(e).__name__}"
                          f"{': ' + text[0] if text else ''})") from None
    if not isinstance(model, nn.Module):
        raise PluginError(f"plugin model {cfg.model}: returned {type(model).__name__}, expected a torch.nn.Module")
    try:
        return as_feature_net(model, cfg.features_at)
    except ConfigError as e:
        raise PluginError(f"plugin model {cfg.model}: {str(e).replace('(features_at;', '(--features-at;')}") \
            from None


def check_on_data(model: nn.Module, cfg: RunConfig, x: torch.Tensor, num_classes: int) -> None:
    """For a plugin model: one forward pass on `x` (a few raw inputs of the run's data), on the
    device the model is on (the run's: a CUDA-only network is checked on CUDA), checks that the
    module named by features_at is the network's last step and reads a (N, d) representation, and
    that the network outputs (N, num_classes) logits (TappedNet.check); a failing forward pass is a
    one-line PluginError. Nothing is written before this passes."""
    from .data import as_model_input

    if not isinstance(model, TappedNet):
        return
    device = next((t.device for t in model.parameters()), torch.device("cpu"))  # on the run's device
    try:
        model.check(as_model_input(x.to(device)), num_classes)
    except ConfigError as e:
        raise PluginError(f"plugin model {cfg.model}: {e}") from None
    except Exception as e:  # noqa: BLE001 - the plugin's forward failed on the data
        text = str(e).strip().splitlines()
        raise PluginError(f"plugin model {cfg.model}: its forward pass failed on a batch of the data of shape "
                          f"{tuple(x.shape)} ({type(e).__name__}{': ' + text[0] if text else ''})") from None


def parameter_names(model: nn.Module) -> list[str]:
    """The state-dict names of the model's parameters (not its buffers), in its order: what a
    store lists so that the probes reading weights need no rebuilt model (model_info)."""
    base = model.net if isinstance(model, TappedNet) else model
    return [n for n, _ in base.named_parameters()]


def state_arrays(model: nn.Module) -> dict[str, np.ndarray]:
    """Every parameter and buffer as a numpy array, keyed by its state-dict name."""
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def load_model(ds_or_path: xr.Dataset | str | os.PathLike, checkpoint: int = -1, *,
               into: nn.Module | None = None, allow_changed_plugins: bool = False) -> nn.Module:
    """Rebuild a run's network from its stored config and the arrays of one checkpoint.

    ``checkpoint`` indexes the committed checkpoints (-1: the latest). The model is returned
    in eval mode on the CPU. A run of a plugin model needs the plugin importable here
    (PluginMissing otherwise) and its module file as it was at training (PluginChanged, naming
    both sha256 hashes, unless ``allow_changed_plugins``). `into`: load the checkpoint into this
    network instead (its state-dict names and shapes must match the stored ones; it stays on its
    device): the way back to the network of a run recorded from a loop of one's own
    (`lrscope.Recorder`), whose class lrscope does not rebuild (`ModelNotStored` without `into`).
    """
    if isinstance(ds_or_path, xr.Dataset):
        if not isinstance(ds_or_path.attrs.get("store"), str):
            raise StoreError("load_model: this Dataset was not opened by lrscope.open_run (no 'store' attribute)")
        path = ds_or_path.attrs["store"]
    elif isinstance(ds_or_path, (str, os.PathLike)):
        path = ds_or_path
    else:
        raise StoreError(f"load_model: expected a Dataset from lrscope.open_run or a run store's path, got "
                         f"{type(ds_or_path).__name__}")
    root = open_store(path)
    attrs = root.attrs.asdict()
    n = attrs[S.ATTR_COMMITTED]["checkpoint"]
    if isinstance(checkpoint, bool) or not isinstance(checkpoint, (int, np.integer)):
        raise StoreError(f"load_model: checkpoint must be an integer position, got {checkpoint!r}")
    positions = np.arange(n)
    if isinstance(ds_or_path, xr.Dataset):  # the checkpoints that Dataset shows (a selection, a live run's prefix)
        positions = _shown_checkpoints(ds_or_path, n, path)
    if len(positions) == 0:
        raise StoreError(f"{path}: no committed checkpoint" + (" in this Dataset" if n else ""))
    if not -len(positions) <= checkpoint < len(positions):
        raise StoreError(f"{path}: checkpoint {checkpoint} out of range (the "
                         f"{'Dataset' if isinstance(ds_or_path, xr.Dataset) else 'store'} has {len(positions)})")
    k = int(positions[checkpoint])
    info = attrs.get(S.ATTR_MODEL_INFO) or {}
    if into is not None:
        if not isinstance(into, nn.Module):
            raise StoreError(f"load_model: into must be a torch.nn.Module, got {type(into).__name__}")
        model = into
    elif S.recorded_by_api(attrs):
        raise ModelNotStored(f"{path}: recorded from a loop of your own ({info.get('model_class', 'a user class')}): "
                             "lrscope does not rebuild its network; load the checkpoint into yours with "
                             "load_model(ds, into=net)")
    else:
        if isinstance(attrs.get(S.ATTR_CONFIG), dict):
            check_run(attrs, "model", allow_changed_plugins)  # before building: missing or changed, in one line
        model = _registry_model(attrs, info, path)
    params = root[S.G_PARAMS]
    state = {}
    for name, want in model.state_dict().items():
        if name not in params:
            raise StoreError(f"{path}: checkpoint lacks parameter {name!r}")
        arr = params[name]
        check_array(arr)
        if tuple(arr.shape[1:]) != tuple(want.shape) or arr.shape[0] < n:
            raise StoreError(f"{path}: parameter {name!r} has shape {tuple(arr.shape)}, expected "
                             f"({n}+, {', '.join(map(str, want.shape))}) (corrupted store)")
        check_node(path, root, f"{S.G_PARAMS}/{name}", arr, attrs)  # dtype, byte order, chunks, codecs
        if np.dtype(arr.dtype) != torch.empty(0, dtype=want.dtype).numpy().dtype:
            raise StoreError(f"{path}: array {S.G_PARAMS}/{name} has dtype {arr.dtype}, the network's is "
                             f"{want.dtype} (edited or corrupted metadata)")
        state[name] = torch.from_numpy(np.asarray(arr[k]))
    model.load_state_dict(state)
    model.eval()
    return model


def _registry_model(attrs: dict, info: dict, path) -> nn.Module:
    """The network of a run of lrscope's loops, built from the registry by its stored config."""
    try:
        cfg = RunConfig.from_stored(attrs[S.ATTR_CONFIG])
        model = build_model(cfg, info["input_shape"], info["num_classes"], model_info=info)
    except PluginError:
        raise
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, LrscopeError):
            raise StoreError(f"{path}: cannot rebuild the model from the stored config ({e})") from None
        raise StoreError(f"{path}: cannot rebuild the model from the stored config "
                         f"({type(e).__name__}: {e}; corrupted store)") from None
    return model


def _shown_checkpoints(ds: xr.Dataset, n: int, path) -> np.ndarray:
    """The store positions of the checkpoints a Dataset from open_run shows: its `checkpoint`
    index after any selection (isel/sel keep the positions as coordinate values), within the
    store's committed ones."""
    if "checkpoint" not in ds.coords:
        return np.arange(min(n, int((ds.attrs.get("committed") or {}).get("checkpoint", n))))
    pos = np.atleast_1d(np.asarray(ds["checkpoint"].values))
    if pos.dtype.kind not in "iu" or pos.ndim != 1 or ((pos < 0) | (pos >= n)).any():
        raise StoreError(f"{path}: the Dataset's checkpoint coordinate does not hold checkpoint positions of "
                         "the store (not selected from open_run's Dataset?)")
    return pos
