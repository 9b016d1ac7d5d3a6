"""The networks of the model registry (`train/models.py` builds them by name). Every one splits
``forward_features`` (the penultimate, post-activation representation, shape (N, num_features))
from ``forward_head`` (the logits), so probes read the representation directly instead of
fishing it out with hooks.
"""

from __future__ import annotations

import torch
from torch import nn


class FeatureNet(nn.Module):
    """The registry's interface: subclasses define ``forward_features`` and a linear ``head``."""

    head: nn.Linear

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, f: torch.Tensor) -> torch.Tensor:
        return self.head(f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))

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

    def stacked_forward(self, weights: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """K copies of this net at once (a batched sweep's stack, train/step.py): `weights` its
        weight matrices in `parameters()` order, each stacked along a leading run dimension,
        `x` (K, batch, ...) -> logits (K, batch, classes), as batched matmuls."""
        k, b = x.shape[:2]
        h = x.reshape(k, b, -1)
        for w in weights[:-1]:
            h = torch.relu(torch.bmm(h, w.transpose(1, 2)))
        return torch.bmm(h, weights[-1].transpose(1, 2))

class VGGLike(FeatureNet):
    """VGG11-like CNN without bias terms or normalisation, one linear layer after the convs.

    Kaiming-normal initialisation: with PyTorch's default init this bias-free, norm-free net
    stays at chance (measured here)."""

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
