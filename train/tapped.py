"""Any ``torch.nn.Module`` seen through the registry's interface (`nets.FeatureNet`).

A network of the user's own (a plugin model, or the model of a loop recorded through the public
API) names the module whose *input* is its penultimate representation — ``features_at``, a name
from ``model.named_modules()`` such as ``fc`` or ``classifier.1``. `TappedNet` reads that input
with a forward pre-hook (torchvision's feature extraction traces the graph with torch.fx, which
fails on data-dependent control flow; a hook works on any module), so:

- ``forward(x)`` is the user's network, unchanged;
- ``forward_features(x)`` runs it up to the tapped module and stops there (the rest is not
  computed), returning the tapped module's input flattened to (N, num_features);
- ``forward_head(f)`` applies the tapped module, which is what the network outputs when the tapped
  module is its last operation (`check` verifies that on an example batch).

The state dict is the user's own (``fc.weight``, not ``net.fc.weight``): ``head`` is an alias of
the tapped module, not a second registration of it, so a checkpoint loads into the user's class
as it is.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from .nets import FeatureNet


class _Stop(Exception):
    """Raised by the tap's hook once the features are captured: the rest of the net is skipped."""


def module_names(net: nn.Module, limit: int = 12) -> str:
    """A short list of `net`'s named modules, for error messages."""
    names = [n for n, _ in net.named_modules() if n]
    more = f", … ({len(names)} in all)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more if names else "none"


class TappedNet(FeatureNet):
    """`net` with ``forward_features`` = the input of its module named `features_at`.

    ``head`` is that module when it is a ``torch.nn.Linear`` (what structured pruning keeps
    whole); otherwise ``head`` is None and the probes that need a linear head (pruning, the
    Proposition 2 gradients through the head) are not defined for the network.
    """

    def __init__(self, net: nn.Module, features_at: str):
        super().__init__()
        if not isinstance(net, nn.Module):
            raise ConfigError(f"the model must be a torch.nn.Module, got {type(net).__name__}")
        modules = dict(net.named_modules())
        if not isinstance(features_at, str) or not features_at or features_at not in modules:
            raise ConfigError(f"features_at {features_at!r}: {type(net).__name__} has no module of that name "
                              f"(its modules: {module_names(net)})")
        self.net = net
        self.features_at = features_at
        tap = modules[features_at]
        # aliases, not submodules: the state dict stays the user's own
        object.__setattr__(self, "tap", tap)
        object.__setattr__(self, "head", tap if isinstance(tap, nn.Linear) else None)
        self.num_features = tap.in_features if isinstance(tap, nn.Linear) else None

    # ------------------------------------------------------------------ the interface
    def _capture(self, x: torch.Tensor, stop: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        box: list[torch.Tensor] = []

        def hook(_module, args):
            if not args or not torch.is_tensor(args[0]):
                raise ConfigError(f"features_at {self.features_at!r}: the module's input is not a tensor")
            box.append(args[0])
            if stop:
                raise _Stop

        handle = self.tap.register_forward_pre_hook(hook)
        out = None
        try:
            out = self.net(x)
        except _Stop:
            pass
        finally:
            handle.remove()
        if not box:
            raise ConfigError(f"features_at {self.features_at!r}: the module is not called in the model's forward")
        return box[0].flatten(1), out

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self._capture(x, stop=True)[0]

    def forward_head(self, f: torch.Tensor) -> torch.Tensor:
        return self.tap(f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward pass of the whole network: (the tapped features, the network's output)."""
        f, out = self._capture(x, stop=False)
        return f, out

    def state_dict(self, *args, **kwargs):  # the user's names: the wrapper adds no prefix
        return self.net.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.net.load_state_dict(state_dict, strict=strict, assign=assign)

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def check(self, example: torch.Tensor, num_classes: int) -> None:
        """ConfigError unless, on `example` (a small batch of inputs), the tapped module's input is
        a (N, d) representation, the network outputs (N, num_classes) logits, and those logits are
        the tapped module applied to the representation (the module is the network's last step)."""
        was = self.training
        self.eval()
        try:
            raw: list[torch.Tensor] = []
            handle = self.tap.register_forward_pre_hook(lambda _m, args: raw.append(args[0]) if args else None)
            try:
                out = self.net(example)
            finally:
                handle.remove()
        finally:
            self.train(was)
        name = f"features_at {self.features_at!r}"
        if not raw or not torch.is_tensor(raw[0]):
            raise ConfigError(f"{name}: the module is not called with a tensor in the model's forward")
        if len(raw) > 1:
            raise ConfigError(f"{name}: the module is called {len(raw)} times in one forward pass; name one "
                              f"that is called once (the classifier)")
        if not torch.is_tensor(out) or out.dim() != 2 or out.shape[1] != num_classes:
            shape = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
            raise ConfigError(f"the model's output is {shape}, expected logits of shape (N, {num_classes})")
        f = raw[0].flatten(1)
        if f.shape[0] != example.shape[0]:
            raise ConfigError(f"{name}: its input has shape {tuple(raw[0].shape)}, not one row per sample")
        self.num_features = int(f.shape[1])
        try:
            same = self.tap(raw[0])
            same = same.shape == out.shape and bool(torch.allclose(same, out, rtol=1e-4, atol=1e-5))
        except (RuntimeError, TypeError, ValueError):
            same = False
        if not same:
            raise ConfigError(f"{name}: the model's output is not that module's output (it must be the last "
                              f"step of forward, with the penultimate representation as its input)")


def as_feature_net(model: nn.Module, features_at: str | None) -> FeatureNet:
    """`model` itself when it already has the registry's interface and no tap is asked for, else
    a `TappedNet` on `features_at` (ConfigError when neither applies)."""
    if features_at is None:
        if isinstance(model, FeatureNet):
            return model
        raise ConfigError(f"{type(model).__name__} does not split features from its head: name the module whose "
                          f"input is the penultimate representation (features_at; its modules: "
                          f"{module_names(model)})")
    return TappedNet(model, features_at)
