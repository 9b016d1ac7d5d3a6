"""The pruning probe: the last checkpoint's network pruned at kappa = 0, 0.1, ..., 0.9
(probe/pruning.py computes the curves)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..declare import Headline, param, probe, var

if TYPE_CHECKING:
    import xarray as xr

    from ..context import Context


def _check_criteria(value) -> None:
    from ..pruning import check_criteria

    check_criteria(value)


PRUNING_KINDS = {"structured": "whole units of every hidden layer (neurons, filters) by incoming-weight L2 norm",
                 "magnitude": "single weights by magnitude", "column": "input columns of each layer by norm"}


def _describe(name: str) -> dict[str, str] | None:
    """The attrs of a per-kind variable (pruning_<kind>, pruning_<kind>_se, prunability_<kind>)."""
    for kind, how in PRUNING_KINDS.items():
        if name == f"pruning_{kind}":
            return var(f"{kind} pruning curve", f"accuracy after pruning a fraction κ ({how}) at the last checkpoint",
                       "fraction")
        if name == f"pruning_{kind}_se":
            return var(f"standard error ({kind} pruning)", f"binomial standard error sqrt(a(1 − a)/n) of "
                       f"pruning_{kind} over the n = pruning_samples samples", "fraction")
        if name == f"prunability_{kind}":
            return var(f"κ-prunability ({kind})", f"mean over κ of Acc(f^κ) / Acc(f), pruning {how} (not clipped)")
    return None


@probe(
    "pruning",
    "Accuracy of the last checkpoint's network pruned at kappa = 0, 0.1, ..., 0.9 (structured: whole neurons "
    "or filters, the head kept; magnitude: single weights, globally; column: input columns), on the test "
    "split rebuilt from the config when its labels match the store, else on the group-balanced probe "
    "subset, with the number of samples (pruning_samples) and each accuracy's binomial standard error "
    "(*_se). kappa-prunability: the mean over kappa of Acc(f^kappa) / Acc(f), not clipped (above 1 when "
    "pruning helps) - the paper's text says the sum of the ratios, its Table 1 is on the mean's scale; the "
    "sum is stored beside it (prunability_sum). The paper prunes neurons and kernels without saying how they are "
    "ranked: the default criterion removes the lowest incoming-weight L2 norms of each layer (`incoming`); "
    "--criterion adds incoming-global, outgoing and in-x-out along a criterion dimension "
    "(pruning_by_criterion, prunability_by_criterion), the default's prunability staying the headline. "
    "pruned_accuracy (the mean of Acc(f^kappa)) is an extra view, not the paper's number.",
    format=6,  # 5: prunability not clipped to [0, 1], criteria, sample count, standard errors; 6: the sum
    cost="one pass over the evaluation samples (the test split) for every pruned network: 28 distinct networks "
    "(+9 per extra criterion), sliced to their kept units on lrscope's FCN and CNN, the first layer's "
    "outputs shared (~0.04x of a 3000-step Colored MNIST CNN run, benchmarks/RESULTS.md); --device",
    samples="the whole test split rebuilt from the config (its size: pruning_samples; each accuracy's standard "
    "error: *_se), else the probe subset",
    runs_model=True,
    describe=_describe,
    headline=(Headline("prunability", "prunability", "prun"),
    Headline("pruned_accuracy", "mean pruned accuracy")),
    params={
        "kappas": param((0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9), "the pruned fractions", kind=list,
                        item=float, lo=0, hi=1, cli=False),
        "criterion": param("incoming", "structured-pruning criteria: incoming (per layer, the headline), "
                           "incoming-global, outgoing, in-x-out; comma-separated, or all (computed along a criterion "
                           "dimension)", check=_check_criteria),
        "eval_samples": param(None, "evaluate on a group-balanced subset of at most N test samples (default: all of "
                              "the test split; the pruning_*_se variables give each accuracy's standard error)",
                              kind=int, lo=1, hi=1 << 31, flag="--pruning-samples", metavar="N"),
    },
    variables={
        "prunability": var("κ-prunability", "mean over κ of the retention ratio Acc(f^κ) / Acc(f) after structured "
                           "pruning (lowest incoming-weight L2 norms per layer) at the last checkpoint, not clipped; "
                           "the paper's text sums the ratios over κ, its Table 1 is on the scale of the mean "
                           "(prunability_sum holds the sum)"),
        "prunability_sum": var("κ-prunability as a sum", "sum over κ of the retention ratio Acc(f^κ) / Acc(f) after "
                               "structured pruning: the reading of the paper's text (Barsbey et al. 2025, §3.2); "
                               "prunability is the mean"),
        "pruned_accuracy": var("mean pruned accuracy", "mean over κ of the accuracy after structured pruning, "
                               "Acc(f^κ) (an extra view, not the paper's prunability)", "fraction"),
        "criterion": var("pruning criterion", "how structured pruning ranks the units it removes (incoming: lowest "
                         "incoming-weight L2 norm per layer, the default; incoming-global; outgoing; in-x-out)"),
        "pruning_by_criterion": var("structured pruning curve per criterion", "accuracy after structured pruning of a "
                                    "fraction κ of the units, ranked by each criterion, at the last checkpoint",
                                    "fraction"),
        "pruning_by_criterion_se": var("standard error (pruning per criterion)", "binomial standard error sqrt(a(1 − "
                                       "a)/n) of pruning_by_criterion over the n = pruning_samples samples",
                                       "fraction"),
        "prunability_by_criterion": var("κ-prunability per criterion", "mean over κ of Acc(f^κ) / Acc(f) after "
                                        "structured pruning ranked by each criterion (not clipped)"),
        "pruning_samples": var("pruning evaluation samples", "number of samples every pruned network was evaluated on",
                               "count"),
    },
)
def probe_pruning(ctx: Context) -> xr.Dataset:
    """Pruning curves of the last checkpoint for each kind (structured under each asked criterion,
    the default first; magnitude; column), their κ-prunabilities, the mean pruned accuracy, and the
    number of evaluation samples with each accuracy's binomial standard error. Every pruned network
    is evaluated in one pass over the samples (probe/pruning.py:pruned_correct)."""
    import numpy as np
    import torch
    import xarray as xr

    from .. import metrics as M
    from ..context import balanced_subset
    from ..pruning import (
        CRITERION_WORDS,
        DEFAULT_CRITERION,
        KINDS,
        accuracy_se,
        check_criteria,
        prunability,
        prunability_sum,
        pruned_accuracy,
        pruned_correct,
        structured_keep,
    )

    x, y, where = ctx.eval_set
    cap = ctx.param("eval_samples")
    if cap and len(y) > cap:  # a group-balanced subset: the accuracies' SEs grow as 1/sqrt(n)
        b = (ctx.ds.test_b if where == "test" else ctx.ds.probe_b).values
        pos = torch.from_numpy(balanced_subset(y.numpy(), b, cap))
        x, y, where = x[pos], y[pos], f"{where} (group-balanced subset)"
    reason = plugin_pruning_reason(ctx.model, x[:2])
    if reason is not None:
        raise M.MetricError(reason)
    dev = ctx.torch_device
    model, x, y = ctx.model.to(dev), x.to(dev), y.to(dev)
    kappas = [float(k) for k in ctx.param("kappas")]
    criteria = check_criteria(ctx.param("criterion"))
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
        curve = M.annotate(xr.DataArray(acc[i], dims=["kappa"], coords=coords),
                         f"accuracy after {kind} pruning{words}", True, kind=kind, **where_attrs,
                         **({"criterion": crit} if crit else {}))
        out[f"pruning_{kind}"] = curve
        out[f"pruning_{kind}_se"] = M.annotate(xr.DataArray(se[i], dims=["kappa"], coords=coords),
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
    curves = M.annotate(xr.DataArray(by, dims=["criterion", "kappa"], coords=ccoords),
                      "accuracy after structured pruning, per criterion", True, kind="structured", **crit_attrs)
    out["pruning_by_criterion"] = curves
    out["pruning_by_criterion_se"] = M.annotate(xr.DataArray(accuracy_se(by, n), dims=["criterion", "kappa"],
                                                           coords=ccoords),
                                              "standard error of the structured pruning curves", None, **where_attrs)
    pc = prunability(curves)
    pc.attrs["long_name"] = "κ-prunability (structured), per criterion"
    out["prunability_by_criterion"] = pc
    out["pruning_samples"] = M.annotate(xr.DataArray(n), "pruning evaluation samples", None, evaluated_on=where)
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

    from ...train.data import as_model_input
    from ...train.tapped import TappedNet
    from ..pruning import prunable_layers

    if not isinstance(model, TappedNet):
        return None
    name = f"plugin model with features_at {model.features_at!r}"
    if model.head is None:
        return (f"{name}: that module is a {type(model.tap).__name__}, not a torch.nn.Linear; structured pruning "
                f"keeps the classifier whole and needs it to be one")
    layers = prunable_layers(model)
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
