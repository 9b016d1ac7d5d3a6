"""Two plugin models. Each builder takes ``input_shape`` and ``num_classes`` keywords plus its
declared options and returns a plain ``torch.nn.Module``; its classifier is the module ``fc``,
which lrscope taps for the penultimate representation (``--features-at fc``).

torch is imported inside the builders, so `lrtrain models` lists them without loading it."""

from __future__ import annotations

import math
from collections import OrderedDict

from lrscope.train.config import option
from lrscope.train.plugins import plugin_model


@plugin_model(image=True, options={"width": option(int, lo=1, hi=256, help="channels of the first convolution")})
def small_cnn(*, input_shape, num_classes, width: int = 8):
    """A small CNN: two 3x3 convolutions with ReLU and max pooling, global average pooling and a
    linear classifier fc (the penultimate representation: fc's input, 2*width pooled channels)."""
    from torch import nn

    c = input_shape[0]
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(c, width, 3, padding=1)), ("relu1", nn.ReLU()), ("pool1", nn.MaxPool2d(2)),
        ("conv2", nn.Conv2d(width, 2 * width, 3, padding=1)), ("relu2", nn.ReLU()),
        ("gap", nn.AdaptiveAvgPool2d(1)), ("flat", nn.Flatten()),
        ("fc", nn.Linear(2 * width, num_classes)),
    ]))


@plugin_model(options={"hidden": option(int, lo=1, hi=4096, help="hidden width")})
def mlp(*, input_shape, num_classes, hidden: int = 32):
    """A two-layer ReLU MLP on the flattened input, classifier fc."""
    from torch import nn

    return nn.Sequential(OrderedDict([
        ("flat", nn.Flatten()), ("hidden", nn.Linear(math.prod(input_shape), hidden)), ("relu", nn.ReLU()),
        ("fc", nn.Linear(hidden, num_classes)),
    ]))
