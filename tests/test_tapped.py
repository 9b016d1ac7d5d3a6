"""`TappedNet`: any torch module seen through the registry's interface by naming its classifier."""

import pytest
import torch
from torch import nn

from lrscope.errors import ConfigError
from lrscope.train.tapped import TappedNet, as_feature_net


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU())
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(self.body(x))


def test_tap_reads_the_classifier_input_and_keeps_the_users_state_dict():
    net = Small()
    t = TappedNet(net, "fc")
    x = torch.randn(5, 3, 2, 2)
    t.check(x, 3)
    assert t.num_features == 8 and t.head is net.fc
    f = t.forward_features(x)
    assert torch.equal(f, net.body(x))
    assert torch.allclose(t.forward_head(f), net(x))
    assert list(t.state_dict()) == list(net.state_dict())  # no wrapper prefix
    assert len(list(t.parameters())) == len(list(net.parameters()))  # the head is not counted twice
    f2, out = t.features_and_logits(x)
    assert torch.equal(f2, f) and torch.equal(out, net(x))


@pytest.mark.parametrize("name, message", [
    ("nope", "has no module of that name"),
    ("body.1", "is not that module's output"),
    ("", "has no module of that name"),
])
def test_a_wrong_tap_is_a_one_line_error(name, message):
    with pytest.raises(ConfigError, match=message):
        TappedNet(Small(), name).check(torch.randn(2, 12), 3)


def test_output_must_be_logits_of_the_classes():
    with pytest.raises(ConfigError, match=r"expected logits of shape \(N, 4\)"):
        TappedNet(Small(), "fc").check(torch.randn(2, 12), 4)


def test_untapped_module_needs_a_name():
    with pytest.raises(ConfigError, match="features_at"):
        as_feature_net(Small(), None)
