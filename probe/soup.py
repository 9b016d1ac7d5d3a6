"""The model soup of a sweep (Barsbey et al., supplement Fig. 30 right; Wortsman et al. 2022's
"uniform soup"): the element-wise mean of the final weights of finished runs trained at different
learning rates from the same initialisation, evaluated beside each of its ingredients.

Runs share their initialisation when they share seed, model, its options/widths, dataset, its
options, data seed, bias-conflicting ratio and initial weights file (the network is built under
``torch.manual_seed(seed)`` before anything else draws); one soup is made per seed. BatchNorm
running statistics are recomputed for the soup by default (`bn="recompute"`: one pass over the
training split in train mode with a cumulative average; the averaged statistics of the
ingredients do not describe the averaged network's activations), or averaged like every other
tensor (`bn="average"`); integer buffers (BatchNorm's step counter) take the first ingredient's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from .metrics import MetricError, annotate, group_accuracy_np

# config fields that fix a run's architecture and initialisation (besides the seed)
SHARED_INIT = ("dataset", "model", "model_options", "widths", "data_options", "data_seed", "bias_conflicting_ratio",
               "weights")
BN_MODES = ("recompute", "average")


def soup_state(states: list[dict]) -> dict:
    """The uniform soup of state dicts: floating tensors averaged (summed in float64, cast back),
    other tensors (integer counters) taken from the first."""
    import torch

    out = {}
    for name, first in states[0].items():
        if first.is_floating_point():
            acc = torch.stack([s[name].double() for s in states]).mean(0)
            out[name] = acc.to(first.dtype)
        else:
            out[name] = first.clone()
    return out


def _has_batchnorm(model) -> bool:
    from torch import nn

    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _recompute_bn(model, cfg: dict, data_root, batch: int) -> None:
    """Re-estimate BatchNorm running statistics: reset, then a cumulative average over the whole
    training split, in minibatches of the runs' batch size, without gradients."""
    import torch
    from torch import nn

    from ..train.data import as_model_input, build_dataset

    bundle = build_dataset(cfg["dataset"], seed=cfg["data_seed"], bias_conflicting_ratio=cfg["bias_conflicting_ratio"],
                           data_root=data_root or cfg.get("data_root"), val_fraction=cfg.get("val_fraction", 0.0),
                           **cfg["data_options"])
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average over the pass
    model.train()
    with torch.no_grad():
        for xb in bundle.train.x.split(batch):
            model(as_model_input(xb))
    model.eval()


def model_soup(sw: xr.Dataset, *, lrs=None, seeds=None, data_root: str | None = None,
               bn: str = "recompute") -> xr.Dataset:
    """Average the last-checkpoint weights of the finished runs of `sw` (``lrscope.open_sweep``)
    across learning rates, one soup per seed, and evaluate each soup and each ingredient on the
    test split (rebuilt from the config as the probes do; the stored probe subset when the
    dataset cannot be rebuilt: `eval_split` says which).

    Parameters
    ----------
    sw : the sweep Dataset.
    lrs : learning rates to soup (default: every LR with a finished run); each must have one.
    seeds : seeds to soup (default: all); each soup needs two or more ingredients.
    data_root : where file-based datasets live.
    bn : "recompute" (BatchNorm statistics re-estimated on the training split) or "average".

    Returns
    -------
    Dataset over ``seed`` (and ``lr`` for the ingredients): ``soup_unbiased_accuracy``,
    ``soup_worst_group_accuracy``, ``soup_param_compressibility``; ``ingredient_*`` beside them
    (NaN where a seed has no run at that LR); ``ingredient_run`` (run ids); ``n_ingredients``.
    """
    import torch

    from ..train.loop import evaluate
    from ..train.restore import load_model
    from .context import NO_BIAS, Context, has_bias
    from .metrics import compressibility

    if bn not in BN_MODES:
        raise MetricError(f"bn must be one of {', '.join(BN_MODES)}, got {bn!r}")
    if "stores" not in sw.attrs or "configs" not in sw.attrs:
        raise MetricError("model_soup needs the Dataset of lrscope.open_sweep (no 'stores'/'configs' attributes)")
    stores, configs = list(sw.attrs["stores"]), list(sw.attrs["configs"])
    ids = [str(r) for r in sw.run.values]
    status = [str(s) for s in sw.status.values]
    runs = [i for i in range(len(stores)) if status[i] == "completed"]
    if lrs is not None:
        lrs = [float(v) for v in lrs]
        have = {float(configs[i]["lr"]) for i in runs}
        missing = [v for v in lrs if v not in have]
        if missing:
            raise MetricError(f"no finished run at lr {missing[0]:g}; finished runs have lr "
                              f"{', '.join(f'{v:g}' for v in sorted(have)) or 'none'}")
        runs = [i for i in runs if float(configs[i]["lr"]) in lrs]
    if seeds is not None:
        seeds = [int(s) for s in seeds]
        runs = [i for i in runs if int(configs[i]["seed"]) in seeds]
    if not runs:
        raise MetricError("no finished runs to soup")
    ref = configs[runs[0]]
    for i in runs:
        for f in SHARED_INIT:
            if configs[i].get(f) != ref.get(f):
                raise MetricError(f"cannot soup runs of different architecture or initialisation: {ids[i]} has "
                                  f"{f}={configs[i].get(f)!r}, {ids[runs[0]]} has {ref.get(f)!r}")
    by_seed: dict[int, list[int]] = {}
    for i in runs:
        by_seed.setdefault(int(configs[i]["seed"]), []).append(i)
    for s, members in by_seed.items():
        seen: dict[float, int] = {}
        for i in members:
            lr = float(configs[i]["lr"])
            if lr in seen:
                raise MetricError(f"two finished runs at lr {lr:g}, seed {s} ({ids[seen[lr]]}, {ids[i]}): "
                                  "a soup takes one run per learning rate; open a sweep with one per (lr, seed)")
            seen[lr] = i
        if len(members) < 2:
            raise MetricError(f"seed {s}: a soup needs finished runs at two or more learning rates, got "
                              f"{len(members)} ({', '.join(ids[i] for i in members)})")

    seed_vals = sorted(by_seed)
    lr_vals = sorted({float(configs[i]["lr"]) for i in runs})
    shape = (len(seed_vals), len(lr_vals))
    ing = {k: np.full(shape, np.nan) for k in ("unbiased", "worst", "comp")}
    ing_run = np.full(shape, "", dtype=object)
    soup = {k: np.full(len(seed_vals), np.nan) for k in ("unbiased", "worst", "comp")}
    n_ing = np.zeros(len(seed_vals), dtype=np.int64)

    import lrscope

    ds0 = lrscope.open_run(stores[runs[0]], probes=False)
    x, y, where = Context(Path(stores[runs[0]]), ds0, data_root).eval_set
    b = ds0.test_b.values if where == "test" else ds0.probe_b.values
    yv = y.numpy()
    biased = has_bias(ds0)

    def scores(model):
        with torch.no_grad():
            logits = evaluate(model, x).cpu().numpy()
        acc = group_accuracy_np(logits, yv, b)
        w = np.concatenate([p.detach().cpu().flatten().numpy() for p in model.parameters() if p.ndim > 1])
        comp = float(compressibility(xr.DataArray(w, dims=["weight"]), feature_dim="weight", q=2, kappa=0.1))
        worst = float(acc["worst_group_accuracy"]) if biased else float("nan")  # groups of a placeholder b
        return float(acc["unbiased_accuracy"]), worst, comp

    bn_used = "none (no BatchNorm)"
    for si, s in enumerate(seed_vals):
        members = sorted(by_seed[s], key=lambda i: float(configs[i]["lr"]))
        models = [load_model(stores[i], checkpoint=-1) for i in members]
        for i, m in zip(members, models):
            li = lr_vals.index(float(configs[i]["lr"]))
            ing["unbiased"][si, li], ing["worst"][si, li], ing["comp"][si, li] = scores(m)
            ing_run[si, li] = ids[i]
        souped = load_model(stores[members[0]], checkpoint=-1)
        souped.load_state_dict(soup_state([m.state_dict() for m in models]))
        if _has_batchnorm(souped):
            if bn == "recompute":
                _recompute_bn(souped, configs[members[0]], data_root, int(configs[members[0]]["batch_size"]))
                bn_used = "recomputed on the training split"
            else:
                bn_used = "averaged over the ingredients"
        soup["unbiased"][si], soup["worst"][si], soup["comp"][si] = scores(souped)
        n_ing[si] = len(members)

    split = "the test split" if where == "test" else "the stored group-balanced probe subset"
    dims1, dims2 = ["seed"], ["seed", "lr"]
    out = xr.Dataset(
        {
            "soup_unbiased_accuracy": annotate(xr.DataArray(soup["unbiased"], dims=dims1),
                                             f"unbiased accuracy of the model soup on {split}", None),
            "soup_worst_group_accuracy": annotate(xr.DataArray(soup["worst"], dims=dims1),
                                                f"worst-group accuracy of the model soup on {split}", None),
            "soup_param_compressibility": annotate(xr.DataArray(soup["comp"], dims=dims1),
                                                 "parameter (2, 0.1)-compressibility of the model soup", None),
            "ingredient_unbiased_accuracy": annotate(xr.DataArray(ing["unbiased"], dims=dims2),
                                                   f"unbiased accuracy of each ingredient on {split}", None),
            "ingredient_worst_group_accuracy": annotate(xr.DataArray(ing["worst"], dims=dims2),
                                                      f"worst-group accuracy of each ingredient on {split}", None),
            "ingredient_param_compressibility": annotate(xr.DataArray(ing["comp"], dims=dims2),
                                                       "parameter (2, 0.1)-compressibility of each ingredient", None),
            "ingredient_run": xr.DataArray(ing_run.astype(str), dims=dims2),
            "n_ingredients": xr.DataArray(n_ing, dims=dims1),
        },
        coords={"seed": seed_vals, "lr": lr_vals},
    )
    long = {
        "soup_unbiased_accuracy": ("soup unbiased accuracy", "fraction",
                                   "accuracy of the uniform model soup (mean of the ingredients' final weights)"),
        "soup_worst_group_accuracy": ("soup worst-group accuracy", "fraction",
                                      "lowest per-(y, b)-group accuracy of the uniform model soup"),
        "soup_param_compressibility": ("soup parameter compressibility", None,
                                       "(2, 0.1)-compressibility of the soup's weight tensors with >1 dimension"),
        "ingredient_unbiased_accuracy": ("ingredient unbiased accuracy", "fraction",
                                         "accuracy of the ingredient run's last checkpoint, evaluated like the soup"),
        "ingredient_worst_group_accuracy": ("ingredient worst-group accuracy", "fraction",
                                            "lowest per-(y, b)-group accuracy of the ingredient's last checkpoint"),
        "ingredient_param_compressibility": ("ingredient parameter compressibility", None,
                                             "(2, 0.1)-compressibility of the ingredient's weight tensors"),
        "ingredient_run": ("ingredient run", None, "run id of the ingredient at this (seed, lr); '' where none"),
        "n_ingredients": ("ingredients", "count", "finished runs averaged into the seed's soup"),
        "seed": ("seed", None, "initialisation seed shared by a soup's ingredients"),
        "lr": ("learning rate", None, "configured learning rate of the ingredient"),
    }
    for name, (ln, units, desc) in long.items():
        v = out[name]
        v.attrs.update(long_name=ln, description=desc + ("" if name in ("seed", "lr", "n_ingredients",
                                                                         "ingredient_run") else f" ({split})"))
        if units:
            v.attrs["units"] = units
    if not biased:
        out.attrs["not_defined"] = f"soup_worst_group_accuracy, ingredient_worst_group_accuracy (NaN): {NO_BIAS}"
    out.attrs.update(eval_split=where, bn_statistics=bn_used,
                     description="uniform model soup of the final weights across learning rates, per seed "
                                 "(Barsbey et al. supplement Fig. 30 right; Wortsman et al. 2022)")
    return out
