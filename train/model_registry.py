"""The model registry's declarations: `ModelEntry`, `MODELS`, `model_entry` and `@register_model`
(the builders themselves are in train/models.py, which registers them; a plugin's builder is
declared with train/plugins.py's `plugin_model`, which makes its entry here). It imports neither
torch nor the plugins, so the models and the plugins both build on it without a circle."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class ModelEntry:
    """One model, declared once: `lrtrain models` prints it, `create_model` builds from it."""

    name: str
    build: Callable[..., nn.Module]  # keywords: input_shape, num_classes, widths (when takes_widths), the options
    description: str  # the builder's docstring
    options: Mapping[str, dict]  # model option -> its declaration (`option`)
    defaults: Mapping[str, Any]  # model option -> the builder's default
    image: bool = False  # needs image inputs (C, H, W)
    batchable: bool = False  # `lrtrain sweep --batched` stacks its runs (train/batched.py)
    heavy: bool = False  # slow on a CPU: its dataset pairs are in the slow test suite
    takes_widths: bool = False  # built from the config field `widths` (the others ignore it)
    check: Callable[[dict, list | None], None] | None = None  # (options over defaults, widths): no building
    # Its penultimate representation can be negative (not a ReLU output). Selectivity (CSI, BSI)
    # and activation sparsity are defined on non-negative activations: for these models they are
    # computed on the rectified representation max(0, h) (probe/runner.py `selective_features`).
    signed_features: bool = False


MODELS: dict[str, ModelEntry] = {}
_BUILT_IN = ("input_shape", "num_classes", "widths")  # keywords every builder may take that are not options


def model_entry(fn, *, name: str, options: dict[str, dict] | None = None, image: bool = False,
                batchable: bool = False, heavy: bool = False, check=None, signed_features: bool = False) -> ModelEntry:
    """The registry entry of builder `fn` under `name`, its declared options checked against the
    keywords it takes (a TypeError when they differ: a programming error). `register_model` puts it
    in MODELS; a plugin's builder carries it (train/plugins.py: `plugin_model`)."""
    params = inspect.signature(fn).parameters
    taken = set(params) - set(_BUILT_IN)
    if taken != set(options or {}):  # a programming error: declared and taken options differ
        raise TypeError(f"model {name!r}: declared options {sorted(options or {})} != builder's {sorted(taken)}")
    defaults = {k: params[k].default for k in options or {}}
    return ModelEntry(name, fn, inspect.cleandoc(fn.__doc__ or ""), dict(options or {}), defaults,
                      image, batchable, heavy, "widths" in params, check, signed_features)


def register_model(fn=None, *, name: str | None = None, options: dict[str, dict] | None = None, image: bool = False,
                   batchable: bool = False, heavy: bool = False, check=None, signed_features: bool = False):
    """Register a model builder (``@register_model`` or ``@register_model(options={...}, ...)``)
    under its function's name. Builders take ``input_shape``, ``num_classes``, ``widths`` if they
    are built from the config's widths, and exactly their declared options."""
    def deco(fn):
        key = name or fn.__name__
        e = model_entry(fn, name=key, options=options, image=image, batchable=batchable, heavy=heavy, check=check,
                        signed_features=signed_features)
        if key in MODELS:
            raise TypeError(f"model {key!r} registered twice")
        MODELS[key] = e
        return fn

    return deco(fn) if fn is not None else deco
