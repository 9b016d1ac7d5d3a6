"""Model registry (timm-style): one entry per model, declared by ``@register_model`` on its builder
in this module (the builder's docstring is the description `lrtrain models` prints, its keyword
defaults the options' defaults). The networks are in `train/nets.py`; builders import them, so
this module loads without torch (`lrtrain models` answers at once).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ..errors import ConfigError
from .checks import option

if TYPE_CHECKING:
    from torch import nn


from .model_registry import _BUILT_IN, MODELS, ModelEntry, model_entry, register_model  # noqa: F401 - the registry


def entry(name: str) -> ModelEntry:
    """The registry's entry of model `name`, or of the plugin model at import path `name`
    (``package.module:function``, train/plugins.py); ConfigError naming the valid ones if unknown."""
    from .plugins import registered_or_plugin

    return registered_or_plugin("model", name, MODELS)


def param_gb(n: int) -> str:
    return f"{n * 4 / 1e9:.1f} GB as float32"


def check_param_count(n: int, what: str) -> None:
    """Refuse a model of more than MAX_PARAMS parameters before it is allocated."""
    from .checks import MAX_PARAMS

    if n > MAX_PARAMS:
        raise ConfigError(f"{what} has {n:,} parameters ({param_gb(n)}); the limit is {MAX_PARAMS:,} "
                          f"({param_gb(MAX_PARAMS)})")


def check_model_options(name: str, options: dict, widths: list[int] | None = None) -> None:
    """Raise ConfigError unless `options` are valid model options of `name` (known names, types,
    ranges) and the model is not too large for what can be told without the data; nothing is built."""
    from .checks import check_value

    e = entry(name)
    check_value("model_options", options, dict)
    if "widths" in options:
        raise ConfigError("'widths' is not a model option: it is the config field widths (--widths 200,200)")
    unknown = sorted(set(options) - set(e.options))
    if unknown:
        hint = " (its hidden widths are the config field widths, --widths)" if e.takes_widths else ""
        valid = ", ".join(e.options) if e.options else "none" + hint
        raise ConfigError(f"unknown model option(s) {', '.join(unknown)} for {name!r}; valid: {valid}")
    for k, v in options.items():
        check_value(f"{name} option {k}", v, **e.options[k], choice_label=k)
    if e.check is not None:
        e.check({**e.defaults, **options}, widths)


def _short(widths) -> str:
    text = ",".join(map(str, widths))
    return text if len(text) <= 40 else text[:37] + "..."


def create_model(name: str, *, input_shape: tuple[int, ...], num_classes: int, **kw) -> nn.Module:
    """Build a registered model. ``kw``: its model options, and ``widths`` (the config field;
    used by the FCN, ignored by the others). Unknown or invalid options are a ConfigError."""
    e = entry(name)
    widths = kw.pop("widths", None)
    check_model_options(name, kw, widths=widths if e.takes_widths else None)
    if e.image and len(input_shape) != 3:
        raise ConfigError(f"model {name!r} needs image inputs (C, H, W), got input shape {tuple(input_shape)}")
    if e.takes_widths:
        kw["widths"] = widths
    return e.build(input_shape=tuple(input_shape), num_classes=num_classes, **kw)


# ------------------------------------------------------------------------------- the models
def _check_fcn(options: dict, widths) -> None:
    if widths is not None:
        from .checks import MAX_WIDTH, check_value

        check_value("widths", widths, list, lo=1, hi=MAX_WIDTH)
        # the hidden layers alone (the first layer's size depends on the data)
        check_param_count(sum(a * b for a, b in zip(widths, widths[1:])), f"the FCN with widths {_short(widths)}")


@register_model(batchable=True, check=_check_fcn)
def fcn(*, input_shape, num_classes, widths: list[int] | None = None) -> nn.Module:
    """Fully connected ReLU network without bias terms (the paper's FCN). Its hidden widths are
    the config field widths (--widths 200,200,200). Without them a run takes the paper's FCN for its
    dataset (the dataset's declared fcn_widths; train/restore.py: fcn_widths), and the builder's own
    default is 3x200 for vector inputs, 2x1024 for images."""
    from .nets import FCN

    if widths is None:
        widths = [200, 200, 200] if len(input_shape) == 1 else [1024, 1024]
    sizes = [math.prod(input_shape), *widths, num_classes]
    check_param_count(sum(a * b for a, b in zip(sizes, sizes[1:])),
                      f"the FCN with widths {_short(widths)} on {sizes[0]} input features")
    return FCN(sizes[0], list(widths), num_classes)


def _check_cnn(options: dict, widths) -> None:
    from .nets import VGGLike

    check_param_count(VGGLike.count(3, 10, options["width"]), f"the CNN with width {options['width']}")


@register_model(image=True, batchable=True, check=_check_cnn,
                options={"width": option(float, lo=0, hi=64, lo_open=True, help="channel multiplier")})
def cnn(*, input_shape, num_classes, width: float = 1.0) -> nn.Module:
    """VGG11-like CNN (the paper's): eight 3x3 convolutions with max pooling, global average
    pooling and one linear layer, without bias terms or normalisation, Kaiming-normal initialised
    (with PyTorch's default initialisation this net stays at chance). The option width scales
    every layer's channels, rounded, at least one per layer (a tiny width gives a 1-channel net;
    0.25 makes an epoch of MNIST-sized data ~25 s on a 2-core CPU)."""
    from .nets import VGGLike

    check_param_count(VGGLike.count(input_shape[0], num_classes, width), f"the CNN with width {width}")
    return VGGLike(input_shape[0], num_classes, width)


def _register_resnet(arch: str):
    def make(*, input_shape, num_classes) -> nn.Module:
        from .nets import TorchvisionResNet

        return TorchvisionResNet(arch, input_shape[0], num_classes)

    make.__name__ = arch
    make.__doc__ = (f"torchvision {arch}, untrained (weights=None; --weights loads a local state dict); a "
                    f"1-channel stem for grey inputs; the penultimate representation is the globally pooled "
                    f"features.")
    register_model(make, image=True, heavy=True)


for _arch in ("resnet18", "resnet50", "wide_resnet101_2"):
    _register_resnet(_arch)


@register_model(image=True, heavy=True, signed_features=True)
def swin_t(*, input_shape, num_classes) -> nn.Module:
    """torchvision Swin-T, untrained (weights=None; --weights loads a local ImageNet checkpoint
    such as torchvision's); a 1-channel patch embedding for grey inputs; the penultimate
    representation is the layer-normed, average-pooled tokens (not a ReLU output: it can be
    negative; selectivity and activation sparsity use its positive part max(0, h))."""
    from .nets import TorchvisionSwin

    return TorchvisionSwin(input_shape[0], num_classes)


def load_weights(model: nn.Module, path: str) -> list[str]:
    """Initialise from a local state dict (torch.save'd, read with weights_only=True: no pickle
    code runs), e.g. torchvision's ImageNet Swin-T/ResNet file. Keys may be the torchvision
    model's own (``conv1.weight``) or ours (``net.conv1.weight``); tensors whose shape differs
    (the 1000-class head, a grey stem) keep their fresh initialisation. Returns those names."""
    import os

    import torch

    if not os.path.isfile(path):
        raise ConfigError(f"--weights {path}: no such file")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is a one-line error
        raise ConfigError(f"--weights {path}: not a loadable state dict ({type(e).__name__}: {e})") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(torch.is_tensor(v) for v in sd.values()):
        raise ConfigError(f"--weights {path}: expected a dict of tensors (a state dict)")
    own = model.state_dict()
    prefix = "net." if any(k.startswith("net.") for k in own) and not any(k.startswith("net.") for k in sd) else ""
    mapped = {prefix + k: v for k, v in sd.items()}
    # the head is shared between net.fc/net.head and self.head: fill both names
    for k in list(mapped):
        for short in ("net.fc.", "net.head."):
            if k.startswith(short):
                mapped["head." + k[len(short):]] = mapped[k]
    matched = {k: v for k, v in mapped.items() if k in own and own[k].shape == v.shape}
    if not matched:
        raise ConfigError(f"--weights {path}: no tensor matches model {type(model).__name__}")
    model.load_state_dict(matched, strict=False)
    return sorted(k for k in own if k not in matched)
