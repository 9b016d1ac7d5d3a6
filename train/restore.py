"""Rebuild models from run stores: config + checkpoint arrays -> torch.nn.Module (no pickle)."""

from __future__ import annotations

import os

import numpy as np
import torch
import xarray as xr
from torch import nn

from ..errors import StoreError
from ..store import schema as S
from ..store.reader import open_store
from .config import RunConfig
from .models import create_model


def build_model(cfg: RunConfig, input_shape, num_classes: int) -> nn.Module:
    kw = dict(cfg.model_options)
    if cfg.widths is not None:
        kw["widths"] = list(cfg.widths)
    return create_model(cfg.model, input_shape=tuple(input_shape), num_classes=num_classes, **kw)


def state_arrays(model: nn.Module) -> dict[str, np.ndarray]:
    """Every parameter and buffer as a numpy array, keyed by its state-dict name."""
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def load_model(ds_or_path: xr.Dataset | str | os.PathLike, checkpoint: int = -1) -> nn.Module:
    """Rebuild a run's network from its stored config and the arrays of one checkpoint.

    ``checkpoint`` indexes the committed checkpoints (-1: the latest). The model is returned
    in eval mode on the CPU.
    """
    path = ds_or_path.attrs["store"] if isinstance(ds_or_path, xr.Dataset) else ds_or_path
    root = open_store(path)
    attrs = root.attrs.asdict()
    n = attrs[S.ATTR_COMMITTED]["checkpoint"]
    if n == 0:
        raise StoreError(f"{path}: no committed checkpoint")
    k = checkpoint if checkpoint >= 0 else n + checkpoint
    if not 0 <= k < n:
        raise StoreError(f"{path}: checkpoint {checkpoint} out of range (store has {n})")
    info = attrs[S.ATTR_MODEL_INFO]
    cfg = RunConfig.from_dict(attrs[S.ATTR_CONFIG])
    model = build_model(cfg, info["input_shape"], info["num_classes"])
    params = root[S.G_PARAMS]
    state = {}
    for name in model.state_dict():
        if name not in params:
            raise StoreError(f"{path}: checkpoint lacks parameter {name!r}")
        state[name] = torch.from_numpy(np.asarray(params[name][k]))
    model.load_state_dict(state)
    model.eval()
    return model
