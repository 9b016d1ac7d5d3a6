"""The attributions probe: Integrated Gradients and DeepLift on the probe inputs at chosen
checkpoints (probe/attribution.py computes them), and the segmenter's background share."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...errors import LrscopeError
from ..declare import param, probe, var

if TYPE_CHECKING:
    import numpy as np
    import xarray as xr

    from ..context import Context


ATTRIBUTION_CHECKPOINTS = "first,last"
ATTR_SAMPLES = param(256, "probe inputs attributed (evenly spaced through the probe subset)", lo=1, hi=1 << 16)


def parse_checkpoints(spec) -> list[str | int]:
    """'first,last' | 'all' | comma-separated checkpoint positions (negative counts from the end):
    ["all"], or the parts (first, last, integers); LrscopeError in one line otherwise."""
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
            k = int(part)
        except ValueError:
            raise LrscopeError(f"checkpoints: expected first, last, all or integers, got {part!r}") from None
        if abs(k) > 2**31:
            raise LrscopeError(f"checkpoints: position {k} out of range")
        out.append(k)
    return out


def _check_segmenter(params: dict) -> None:
    if "segmenter" in params and "segmenter_weights" not in params:
        raise LrscopeError("--segmenter needs --segmenter-weights FILE (a local state dict; never downloaded)")
    if "segmenter_weights" in params:
        from ..segment import DEFAULT_SEGMENTER, check_segmenter_weights

        check_segmenter_weights(params["segmenter_weights"], params.get("segmenter", DEFAULT_SEGMENTER))


def _check_checkpoint_range(runs, params: dict) -> None:
    """Every asked-for checkpoint position exists in every run that has checkpoints (a run whose
    store cannot be read is left to the runner, which reports it)."""
    from ...store import schema as S
    from ...store.reader import open_store

    text = params.get("checkpoints", ATTRIBUTION_CHECKPOINTS)
    ints = [k for k in parse_checkpoints(text) if isinstance(k, int)]
    if not ints:
        return
    for path in runs:
        try:
            n = int(open_store(path).attrs[S.ATTR_COMMITTED]["checkpoint"])
        except Exception:  # noqa: BLE001 - the runner reports unreadable stores
            continue
        bad = [k for k in ints if n > 0 and not -n <= k < n]
        if bad:
            raise LrscopeError(f"checkpoints {text}: position {bad[0]} out of range for {path} "
                               f"(it has {n} checkpoints: 0..{n - 1}, or -{n}..-1)")


def _checkpoints(ctx: Context) -> list[int]:

    n = ctx.ds.sizes["checkpoint"]
    spec = parse_checkpoints(ctx.param("checkpoints"))
    if spec == ["all"]:
        return list(range(n))
    out = []
    for part in spec:
        k = 0 if part == "first" else n - 1 if part == "last" else part
        if not -n <= k < n:
            from ..metrics import MetricError

            raise MetricError(f"checkpoint {part} out of range (the run has {n})")
        out.append(k % n)
    return sorted(set(out))


def attribution_inputs(ctx: Context, x, y) -> tuple:
    """Inputs (the store's layout, sample first) and their labels as the tensors the attributions
    probe attributes, on ctx's device."""
    import numpy as np
    import torch

    from ...train.data import as_model_input

    dev = ctx.torch_device
    return (as_model_input(torch.from_numpy(np.asarray(x))).to(dev),
            torch.from_numpy(np.asarray(y, dtype=np.int64)).to(dev))


def attribution_maps(ctx: Context, model, x, y, method: str, in_dims: list[str]) -> xr.DataArray:
    """The attributions probe's maps (attr_sample, *in_dims) of `x` for the classes `y`
    (`attribution_inputs`) by `model` with the probe's parameters (ig_steps): the probe on its
    probe inputs at each chosen checkpoint, the explorer on one training sample at the last one
    (`attributed_checkpoints`)."""
    from ..attribution import attributions

    return attributions(model, x, y, method=method, n_steps=int(ctx.param("ig_steps")),
                        sample_dim="attr_sample", input_dims=in_dims)


def attributed_checkpoints(ctx: Context) -> list[int]:
    """The checkpoint positions the attributions probe attributes (its `checkpoints` parameter)."""
    return _checkpoints(ctx)


ATTR_METHODS = {"ig": "Integrated Gradients", "deeplift": "DeepLift"}


def _describe(name: str) -> dict[str, str] | None:
    """The attrs of a per-method variable (<method>_entropy, <method>_maps, <method>_<region>_share)."""
    method, _, rest = name.partition("_")
    if method not in ATTR_METHODS:
        return None
    full = ATTR_METHODS[method]
    if rest == "entropy":
        return var(f"{full} entropy", f"normalised entropy of the |{full}| attribution over the input, mean over "
                   "the attributed probe samples (1: spread evenly)")
    if rest == "maps":
        return var(f"{full} maps", f"{full} attributions of up to 16 probe samples, taken in turn from every "
                   "(y, b) group (labels: map_y, map_b), at the last attributed checkpoint")
    if rest.endswith("_share"):
        region = rest[:-6]
        return var(f"{full} share on {region}", f"share of the |{full}| attribution mass on the {region} inputs, "
                   "mean over the attributed probe samples", "fraction")
    return None


@probe(
    "attributions",
    "Integrated Gradients and DeepLift (Captum) on up to 256 group-balanced probe inputs at the chosen "
    "checkpoints: each method's attribution share per input region (core, spurious, noise) and "
    "normalised entropy (Fig. 10's attribution entropy), and the maps of up to 16 samples taken in turn from "
    "every (y, b) group, with their labels, at the last chosen checkpoint. With --segmenter-weights FILE (a "
    "local torchvision DeepLabV3 state dict, never downloaded): Fig. 10's background attribution percentage "
    "as each method's share of |attribution| on the pixels the segmenter calls background "
    "(<m>_background_share), the mean foreground fraction and the map samples' foreground masks.",
    format=6,  # segmenter background share (only with segmenter_weights; the other variables unchanged)
    cost="one backward pass per checkpoint on the bias-free FCN and CNN (exact: x * grad f(x); ~0.004x of the "
    "CNN run at two checkpoints); elsewhere Captum, ig_steps passes for IG; with a segmenter, one "
    "segmenter forward per attributed input at 224x224, once per run; --device",
    samples="up to 256 probe-subset samples, evenly spaced through it (maps: 16, taken in turn from every group)",
    runs_model=True,
    params={
        "checkpoints": param(ATTRIBUTION_CHECKPOINTS, "checkpoints attributed: first,last | all | comma-separated "
                             "positions (negative: from the end)", check=parse_checkpoints),
        "attr_samples": ATTR_SAMPLES,
        "ig_steps": param(32, "Integrated Gradients steps", lo=1, hi=4096),
        "segmenter_weights": param(None, "a local torchvision DeepLabV3 state dict (e.g. "
                                   "deeplabv3_resnet50_coco-cd0a2569.pth; never downloaded) whose background masks "
                                   "give the background attribution share (Fig. 10); recorded by its sha256",
                                   kind="path", metavar="FILE"),
        "segmenter": param("deeplabv3_resnet50", "the architecture of --segmenter-weights",
                           choices=("deeplabv3_resnet50", "deeplabv3_resnet101", "deeplabv3_mobilenet_v3_large")),
    },
    check=_check_segmenter,
    check_runs=_check_checkpoint_range,
    coords=("attr_iteration", "attr_checkpoint_position"),
    describe=_describe,
)
def probe_attributions(ctx: Context) -> xr.Dataset:
    """Integrated Gradients and DeepLift on the probe inputs (up to 256, group-balanced) at the
    chosen checkpoints: attribution share per input region, normalised entropy, and the maps of
    up to 16 samples picked evenly from every (y, b) group (bias-aligned and bias-conflicting
    alike) at the last chosen checkpoint, with their labels, for the report and the explorer."""
    import numpy as np
    import xarray as xr

    from .. import metrics as M
    from ..attribution import (
        METHODS,
        attribution_entropy,
        attribution_rule,
        background_share,
        region_shares,
    )

    ds = ctx.ds
    n = min(ds.sizes["probe_sample"], int(ctx.param("attr_samples")))
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
    rule = {method: {"computed_as": attribution_rule(model, method, int(ctx.param("ig_steps")))}
            for method in METHODS}
    for method in METHODS:
        m = short[method]
        out[f"{m}_entropy"] = M.annotate(xr.DataArray(ents[method], dims=["attr_checkpoint"]),
                                       f"{method} normalised attribution entropy", None, **rule[method])
        for name, vals in shares[method].items():
            out[f"{m}_{name}_share"] = M.annotate(xr.DataArray(vals, dims=["attr_checkpoint"]),
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
                out[f"{m}_{name}_share_per_input"] = M.annotate(
                    xr.DataArray(per[r], dims=["attr_checkpoint"]),
                    f"{method} attribution share on {name} inputs, size-normalised", True if name == "core" else None,
                    description=f"mean absolute attribution per {name} input over the regions' means (the regions' "
                                f"values sum to 1): {int(size[r])} inputs; independent of how many inputs each "
                                "region has")
        if masks is not None:
            out[f"{m}_background_share"] = M.annotate(
                xr.DataArray(bg[method], dims=["attr_checkpoint"]), f"{method} attribution share on background",
                False, description="the paper's background attribution percentage (Fig. 10) as a fraction: share of "
                                   "the absolute attribution mass on the pixels the segmenter calls background "
                                   "(all channels), per input, mean over the attributed inputs",
                units="fraction", **seg_note)
        out[f"{m}_maps"] = M.annotate(maps[method].rename(attr_sample="map_sample"),
                                    f"{method} maps (samples from every group, last checkpoint)", None, **rule[method])
    sel = pos[picks]
    out = out.assign_coords(map_sample_index=("map_sample", sel), map_y=("map_sample", ds.probe_y.values[sel]),
                            map_b=("map_sample", ds.probe_b.values[sel]),
                            map_bias_conflicting=("map_sample", ds.probe_y.values[sel] != ds.probe_b.values[sel]))
    if masks is not None:
        out["foreground_fraction"] = M.annotate(xr.DataArray(float(masks.mean())), "foreground fraction", None,
                                              description="share of the attributed inputs' pixels the segmenter "
                                                          "calls foreground (any VOC class but background), mean "
                                                          "over the inputs", units="fraction", **seg_note)
        out["foreground_masks"] = M.annotate(masks.isel(attr_sample=picks).rename(attr_sample="map_sample"),
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
    import xarray as xr

    path = ctx.param("segmenter_weights")
    if path is None:
        return None, {}
    from ..segment import RULE, file_digest, foreground_masks_torch, load_segmenter

    arch = ctx.param("segmenter")
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        return None, {"background_share": f"not computed: the inputs (shape {tuple(x.shape[1:])}) are not images"}
    seg = load_segmenter(path, arch).to(dev)
    m = foreground_masks_torch(seg, x).cpu().numpy()
    note = {"segmenter": arch, "segmenter_sha256": file_digest(path), "segmented_as": RULE.format(arch=arch)}
    return xr.DataArray(m, dims=["attr_sample", *in_dims[1:]]), note


def _map_picks(y: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    """Up to `n` positions, taken in turn from each (y, b) group (in group order), so the maps show
    bias-aligned and bias-conflicting samples of every class."""
    import numpy as np

    groups = [np.flatnonzero((y == yy) & (b == bb)) for yy, bb in sorted(set(zip(y.tolist(), b.tolist())))]
    out = []
    for k in range(max((len(g) for g in groups), default=0)):
        for g in groups:
            if k < len(g) and len(out) < n:
                out.append(int(g[k]))
    return np.array(sorted(out), dtype=int)
