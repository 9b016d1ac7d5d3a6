"""Plugin builders for the tests (a module on the tests' path, named by its import path
``plugin_toy:NAME``): one that works, and the ways a user's plugin goes wrong."""

from __future__ import annotations

import math
from collections import OrderedDict

from lrscope.train.config import option
from lrscope.train.plugins import plugin_dataset, plugin_model


@plugin_model(options={"hidden": option(int, lo=1, hi=1024, help="hidden width")})
def mlp(*, input_shape, num_classes, hidden: int = 8):
    """A ReLU MLP whose classifier is fc."""
    from torch import nn

    return nn.Sequential(OrderedDict([("flat", nn.Flatten()), ("hidden", nn.Linear(math.prod(input_shape), hidden)),
                                      ("relu", nn.ReLU()), ("fc", nn.Linear(hidden, num_classes))]))


def plain(*, input_shape, num_classes):
    """Undeclared (no options): an MLP whose classifier is a Sequential, not a Linear."""
    from torch import nn

    return nn.Sequential(OrderedDict([("flat", nn.Flatten()), ("hidden", nn.Linear(math.prod(input_shape), 8)),
                                      ("relu", nn.ReLU()),
                                      ("classifier", nn.Sequential(nn.Identity(), nn.Linear(8, num_classes)))]))


def wrong_input(*, input_shape, num_classes):
    """Its first layer expects 1000 inputs: the forward pass fails on the data."""
    from torch import nn

    return nn.Sequential(OrderedDict([("flat", nn.Flatten()), ("fc", nn.Linear(1000, num_classes))]))


def not_a_module(*, input_shape, num_classes):
    return 3


def undeclared(*, input_shape, num_classes, width=4):
    """Takes an option it does not declare."""


def raises(*, input_shape, num_classes):
    raise RuntimeError("the user's own bug\nsecond line")


@plugin_dataset(options={})
def not_a_bundle(*, seed, rho_train):
    """Returns a dict, not a DataBundle."""
    return {"x": 1}


NOT_CALLABLE = 5
