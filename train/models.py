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


def register_model(fn):
    MODELS[fn.__name__] = fn
    return fn


def create_model(name: str, *, input_shape: tuple[int, ...], num_classes: int, **kw) -> nn.Module:
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; valid: {', '.join(sorted(MODELS))}")
    return MODELS[name](input_shape=tuple(input_shape), num_classes=num_classes, **kw)


class FCN(nn.Module):
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

    def forward_head(self, f: torch.Tensor) -> torch.Tensor:
        return self.head(f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@register_model
def fcn(*, input_shape, num_classes, widths: list[int] | None = None, **_) -> nn.Module:
    """FCN; default widths 3x200 for 1-d (synthetic) inputs, 2x1024 for images."""
    if widths is None:
        widths = [200, 200, 200] if len(input_shape) == 1 else [1024, 1024]
    return FCN(math.prod(input_shape), list(widths), num_classes)


class VGGLike(nn.Module):
    """VGG11-like CNN without bias terms or normalisation, one linear layer after the convs.

    Kaiming-normal initialisation: with PyTorch's default init this bias-free, norm-free net
    stays at chance (measured, PAPER.md)."""

    CFG = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512]

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

    def forward_head(self, f):
        return self.head(f)

    def forward(self, x):
        return self.head(self.features(x))


@register_model
def cnn(*, input_shape, num_classes, width: float = 1.0, **_) -> nn.Module:
    if len(input_shape) != 3:
        raise ConfigError(f"model 'cnn' needs image inputs (C, H, W), got input shape {input_shape}")
    return VGGLike(input_shape[0], num_classes, width)


IMAGE_MODELS = {"cnn"}


class TorchvisionResNet(nn.Module):
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

    def forward_head(self, f):
        return self.head(f)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def _register_resnet(arch: str):
    def make(*, input_shape, num_classes, **_) -> nn.Module:
        if len(input_shape) != 3:
            raise ConfigError(f"model {arch!r} needs image inputs (C, H, W), got input shape {input_shape}")
        return TorchvisionResNet(arch, input_shape[0], num_classes)

    make.__name__ = arch
    make.__doc__ = f"torchvision {arch} (weights=None), penultimate = pooled features."
    MODELS[arch] = make
    IMAGE_MODELS.add(arch)


for _arch in ("resnet18", "resnet50"):
    _register_resnet(_arch)
