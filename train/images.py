"""MNIST-style spurious-correlation recipes (Colored MNIST, Double MNIST) on a digit-like base set
(mnist, fashion_mnist or digits: `recipes.load_base`). Recipes follow DATA.md: Colored MNIST after
Nam et al. 2020 (LfF), Double MNIST after Barsbey et al.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from .recipes import (
    BASE,
    N_SAMPLES,
    DataBundle,
    Split,
    bias_labels,
    check_sizes,
    load_base,
    option,
    pick_of_class,
    register_dataset,
    subsample,
)

# One colour per class (RGB in [0, 1]): ten well-separated hues, as in LfF's Colored MNIST.
COLORS = np.array([
    [0.90, 0.10, 0.29], [0.24, 0.71, 0.29], [1.00, 0.88, 0.10], [0.00, 0.51, 0.78], [0.96, 0.51, 0.19],
    [0.57, 0.12, 0.71], [0.27, 0.94, 0.94], [0.94, 0.20, 0.90], [0.82, 0.96, 0.24], [0.98, 0.75, 0.75],
], dtype=np.float32)


@register_dataset("colored_mnist", rho_train=0.025, fcn_widths=(1024, 1024), cached=True, options={
    "base": BASE, "n_train": N_SAMPLES, "n_test": N_SAMPLES,
    "color_std": option(float, lo=0, hi=1, help="std of the Gaussian colour jitter"),
})
def colored_mnist(*, seed: int, rho_train: float, base: str = "mnist", data_root,
                  n_train: int | None = None, n_test: int | None = None, color_std: float = 0.005) -> DataBundle:
    """Colored MNIST (Nam et al. 2020): the digit (shape) is the class, its colour the bias.

    The foreground is multiplied by the class's colour (+ Gaussian jitter of std `color_std`);
    bias-conflicting training samples take one of the other 9 colours; the unbiased test set
    draws the colour uniformly over all 10 (so 90 % of it is bias-conflicting)."""
    check_sizes(n_train=n_train, n_test=n_test)
    gen = np.random.default_rng([seed, 7300])
    xtr, ytr, xte, yte = load_base(base, data_root, seed)

    def split(x, y, n, rho) -> Split:
        x, y, idx = subsample(x, y, n, gen)
        b = bias_labels(y, rho, 10, gen)
        col = COLORS[b] + color_std * gen.standard_normal((len(b), 3)).astype(np.float32)
        img = (x.astype(np.float32) / 255.0)[:, None] * np.clip(col, 0, 1)[:, :, None, None]
        return Split.from_numpy((img * 255).round().astype(np.uint8), y, b, idx)

    return DataBundle("colored_mnist", split(xtr, ytr, n_train, rho_train), split(xte, yte, n_test, 0.9),
                      10, 10, (3, 28, 28), {}, f"colored {base}")


@register_dataset("double_mnist", rho_train=0.025, fcn_widths=(1024, 1024), cached=True, options={
    "base": BASE, "n_train": N_SAMPLES, "n_test": N_SAMPLES,
    "dim": option(float, lo=0, hi=1, lo_open=True, help="brightness of the left (core) digit"),
})
def double_mnist(*, seed: int, rho_train: float, base: str = "mnist", data_root,
                 n_train: int | None = None, n_test: int | None = None, dim: float = 0.5) -> DataBundle:
    """Double MNIST (Barsbey et al.): two digits side by side; the left one is the class (core),
    the right one, brighter (the left is scaled by `dim`), is the bias (spurious). Bias-conflicting
    samples pair the left digit with a right digit of another class; the unbiased test set draws
    the right digit's class uniformly. Regions: left half core, right half spurious."""
    check_sizes(n_train=n_train, n_test=n_test)
    if not 0 < dim <= 1:
        raise ConfigError(f"double_mnist option dim must be in (0, 1], got {dim}")
    gen = np.random.default_rng([seed, 7400])
    xtr, ytr, xte, yte = load_base(base, data_root, seed)

    def split(x, y, n, rho) -> Split:
        xs, ys, idx = subsample(x, y, n, gen)
        b = bias_labels(ys, rho, 10, gen)
        right = x[pick_of_class(y, b, gen, "double_mnist")]  # partner digits from the same split
        left = (xs.astype(np.float32) * dim).round().astype(np.uint8)
        img = np.concatenate([left, right], axis=2)[:, None]  # (n, 1, 28, 56)
        return Split.from_numpy(img, ys, b, idx)

    regions = {"core": np.zeros((1, 28, 56), bool), "spurious": np.zeros((1, 28, 56), bool)}
    regions["core"][..., :28] = True
    regions["spurious"][..., 28:] = True
    return DataBundle("double_mnist", split(xtr, ytr, n_train, rho_train), split(xte, yte, n_test, 0.9),
                      10, 10, (1, 28, 56), regions, f"double {base}")
