"""Model registry (timm-style). Every model splits ``forward_features`` (the penultimate,
post-activation representation, shape (N, num_features)) from ``forward_head`` (the logits),
so probes read the representation directly instead of fishing it out with hooks.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from ..errors import ConfigError

MODELS: dict[str, Callable[..., nn.Module]] = {}
# name -> model option -> its declaration (check_value's keywords); a model absent here takes none
MODEL_OPTIONS: dict[str, dict[str, dict]] = {}
TAKES_WIDTHS = {"fcn"}  # models built from the config's `widths` field; the others ignore it


def register_model(fn=None, *, options: dict[str, dict] | None = None):
    """Register a model builder (``@register_model`` or ``@register_model(options={...})``).
    Builders take ``input_shape``, ``num_classes`` and exactly their declared options."""
    def deco(fn):
        import inspect

        params = set(inspect.signature(fn).parameters) - {"input_shape", "num_classes", "widths"}
        if params != set(options or {}):  # a programming error: declared and taken options differ
            raise TypeError(f"model {fn.__name__!r}: declared options {sorted(options or {})} != builder's {sorted(params)}")
        MODELS[fn.__name__] = fn
        MODEL_OPTIONS[fn.__name__] = dict(options or {})
        return fn

    return deco(fn) if fn is not None else deco


def _option(kind: type, **kw) -> dict:
    return {"kind": kind, **kw}


def param_gb(n: int) -> str:
    return f"{n * 4 / 1e9:.1f} GB as float32"


def check_param_count(n: int, what: str) -> None:
    """Refuse a model of more than MAX_PARAMS parameters before it is allocated."""
    from .config import MAX_PARAMS

    if n > MAX_PARAMS:
        raise ConfigError(f"{what} has {n:,} parameters ({param_gb(n)}); the limit is {MAX_PARAMS:,} ({param_gb(MAX_PARAMS)})")


def check_model_options(name: str, options: dict, widths: list[int] | None = None) -> None:
    """Raise ConfigError unless `options` are valid model options of `name` (known names, types,
    ranges) and the model is not too large for what can be told without the data; nothing is built."""
    from .config import check_value

    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; valid: {', '.join(sorted(MODELS))}")
    check_value("model_options", options, dict)
    specs = MODEL_OPTIONS.get(name, {})
    if "widths" in options:
        raise ConfigError("'widths' is not a model option: it is the config field widths (--widths 200,200)")
    unknown = sorted(set(options) - set(specs))
    if unknown:
        valid = ", ".join(specs) if specs else "none" + (" (its hidden widths are the config field widths, --widths)"
                                                         if name in TAKES_WIDTHS else "")
        raise ConfigError(f"unknown model option(s) {', '.join(unknown)} for {name!r}; valid: {valid}")
    for k, v in options.items():
        check_value(f"{name} option {k}", v, **specs[k], choice_label=k)
    if name == "fcn" and widths is not None:
        check_value("widths", widths, list, lo=1, hi=_max_width())
        # the hidden layers alone (the first layer's size depends on the data)
        check_param_count(sum(a * b for a, b in zip(widths, widths[1:])), f"the FCN with widths {_short(widths)}")
    if name == "cnn":
        check_param_count(VGGLike.count(3, 10, options.get("width", 1.0)), f"the CNN with width {options.get('width', 1.0)}")


def _max_width() -> int:
    from .config import MAX_WIDTH

    return MAX_WIDTH


def _short(widths) -> str:
    text = ",".join(map(str, widths))
    return text if len(text) <= 40 else text[:37] + "..."


def create_model(name: str, *, input_shape: tuple[int, ...], num_classes: int, **kw) -> nn.Module:
    """Build a registered model. ``kw``: its model options, and ``widths`` (the config field;
    used by the FCN, ignored by the others). Unknown or invalid options are a ConfigError."""
    widths = kw.pop("widths", None)
    check_model_options(name, kw, widths=widths if name in TAKES_WIDTHS else None)
    if name in TAKES_WIDTHS:
        kw["widths"] = widths
    return MODELS[name](input_shape=tuple(input_shape), num_classes=num_classes, **kw)


class FeatureNet(nn.Module):
    """The registry's interface: subclasses define ``forward_features`` and a linear ``head``."""

    head: nn.Linear

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, f: torch.Tensor) -> torch.Tensor:
        return self.head(f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


def _require_image(name: str, input_shape) -> None:
    if len(input_shape) != 3:
        raise ConfigError(f"model {name!r} needs image inputs (C, H, W), got input shape {input_shape}")


class FCN(FeatureNet):
    """Fully connected ReLU network without bias terms (the paper's FCN)."""

    def __init__(self, in_features: int, widths: list[int], num_classes: int):
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_features
        for w in widths:
            layers += [nn.Linear(prev, w, bias=False), nn.ReLU()]
            prev = w
        self.features = nn.Sequential(nn.Flatten(), *layers)
        self.head = nn.Linear(prev, num_classes, bias=False)
        self.num_features = prev

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


@register_model
def fcn(*, input_shape, num_classes, widths: list[int] | None = None) -> nn.Module:
    """FCN; default widths 3x200 for 1-d (synthetic) inputs, 2x1024 for images."""
    if widths is None:
        widths = [200, 200, 200] if len(input_shape) == 1 else [1024, 1024]
    sizes = [math.prod(input_shape), *widths, num_classes]
    check_param_count(sum(a * b for a, b in zip(sizes, sizes[1:])),
                      f"the FCN with widths {_short(widths)} on {sizes[0]} input features")
    return FCN(sizes[0], list(widths), num_classes)


class VGGLike(FeatureNet):
    """VGG11-like CNN without bias terms or normalisation, one linear layer after the convs.

    Kaiming-normal initialisation: with PyTorch's default init this bias-free, norm-free net
    stays at chance (measured, PAPER.md)."""

    CFG = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512]

    @classmethod
    def channels(cls, width: float) -> list:
        return [v if v == "M" else max(1, int(round(v * width))) for v in cls.CFG]

    @classmethod
    def count(cls, in_channels: int, num_classes: int, width: float) -> int:
        """Parameters of the net, without building it."""
        n, c = 0, in_channels
        for v in cls.channels(width):
            if v != "M":
                n, c = n + 9 * c * v, v
        return n + c * num_classes

    def __init__(self, in_channels: int, num_classes: int, width: float = 1.0):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for v in self.CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            else:
                out = max(1, int(round(v * width)))
                layers += [nn.Conv2d(c, out, 3, padding=1, bias=False), nn.ReLU()]
                c = out
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c, num_classes, bias=False)
        self.num_features = c
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")

    def forward_features(self, x):
        return self.features(x)


@register_model(options={"width": _option(float, lo=0, hi=64, lo_open=True, help="channel multiplier")})
def cnn(*, input_shape, num_classes, width: float = 1.0) -> nn.Module:
    """VGG11-like CNN, no bias terms or normalisation, Kaiming init; model option width scales channels."""
    _require_image("cnn", input_shape)
    check_param_count(VGGLike.count(input_shape[0], num_classes, width), f"the CNN with width {width}")
    return VGGLike(input_shape[0], num_classes, width)


IMAGE_MODELS = {"cnn"}


class TorchvisionResNet(FeatureNet):
    """A torchvision ResNet with the registry's interface: ``forward_features`` is everything up
    to the global average pool (post-ReLU, flattened), ``forward_head`` the final linear layer.
    Grey (1-channel) inputs get a 1-channel stem; nothing is downloaded (weights=None)."""

    def __init__(self, arch: str, in_channels: int, num_classes: int):
        super().__init__()
        import torchvision

        net = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
        if in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.net = net
        self.head = net.fc
        self.num_features = net.fc.in_features

    def forward_features(self, x):
        n = self.net
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        x = n.layer4(n.layer3(n.layer2(n.layer1(x))))
        return torch.flatten(n.avgpool(x), 1)


def _register_resnet(arch: str):
    def make(*, input_shape, num_classes) -> nn.Module:
        _require_image(arch, input_shape)
        return TorchvisionResNet(arch, input_shape[0], num_classes)

    make.__name__ = arch
    make.__doc__ = f"torchvision {arch} (weights=None), penultimate = pooled features."
    register_model(make)
    IMAGE_MODELS.add(arch)


for _arch in ("resnet18", "resnet50", "wide_resnet101_2"):
    _register_resnet(_arch)


class TorchvisionSwin(FeatureNet):
    """torchvision's Swin-T: ``forward_features`` is the layer-normed, average-pooled token
    representation (the input of the classification head; not a ReLU output, so it can be
    negative), ``forward_head`` the head. Grey inputs get a 1-channel patch embedding."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        import torchvision

        net = torchvision.models.swin_t(weights=None, num_classes=num_classes)
        if in_channels != 3:
            old = net.features[0][0]
            net.features[0][0] = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride)
        self.net = net
        self.head = net.head
        self.num_features = net.head.in_features

    def forward_features(self, x):
        n = self.net
        return n.flatten(n.avgpool(n.permute(n.norm(n.features(x)))))


@register_model
def swin_t(*, input_shape, num_classes) -> nn.Module:
    """torchvision Swin-T (weights=None; --weights loads a local ImageNet checkpoint), pooled features."""
    _require_image("swin_t", input_shape)
    return TorchvisionSwin(input_shape[0], num_classes)


IMAGE_MODELS.add("swin_t")


def load_weights(model: nn.Module, path: str) -> list[str]:
    """Initialise from a local state dict (torch.save'd, read with weights_only=True: no pickle
    code runs), e.g. torchvision's ImageNet Swin-T/ResNet file. Keys may be the torchvision
    model's own (``conv1.weight``) or ours (``net.conv1.weight``); tensors whose shape differs
    (the 1000-class head, a grey stem) keep their fresh initialisation. Returns those names."""
    import os

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
