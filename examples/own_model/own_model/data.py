"""A plugin dataset: 1x8x8 images whose class is a horizontal or a vertical stripe (the core
feature) and whose bias attribute is a bright top-left corner (the spurious one), agreeing with
the class on all but a fraction rho_train of the training images."""

from __future__ import annotations

import numpy as np

from lrscope.train.config import option
from lrscope.train.plugins import plugin_dataset
from lrscope.train.recipes import DataBundle, Split, bias_labels


def _images(y: np.ndarray, b: np.ndarray, gen: np.random.Generator, noise: float) -> np.ndarray:
    n = len(y)
    x = gen.normal(0.0, noise, size=(n, 1, 8, 8)).astype(np.float32)
    rows = gen.integers(2, 6, size=n)
    for i in range(n):
        if y[i] == 0:
            x[i, 0, rows[i], 2:6] += 1.0  # horizontal stripe
        else:
            x[i, 0, 2:6, rows[i]] += 1.0  # vertical stripe
    x[:, 0, 0, 0] += np.where(b == 1, 2.0, -2.0)  # the spurious corner
    return x


@plugin_dataset(rho_train=0.1, options={
    "n_train": option(int, lo=2, hi=1_000_000, help="training images"),
    "n_test": option(int, lo=2, hi=1_000_000, help="test images (y independent of b)"),
    "noise": option(float, lo=0, hi=10, help="standard deviation of the pixel noise"),
})
def corner_stripes(*, seed, rho_train, n_train: int = 400, n_test: int = 400, noise: float = 0.3):
    """Stripes (horizontal: class 0, vertical: class 1) with a spurious bright corner that agrees with
    the class on all but rho_train of the training images and is independent of it in the test split."""
    gen = np.random.default_rng([seed, 24])
    y_tr = gen.permutation(np.arange(n_train) % 2)
    b_tr = bias_labels(y_tr, rho_train, 2, gen)
    y_te = gen.permutation(np.arange(n_test) % 2)
    b_te = gen.permutation(np.arange(n_test) // 2 % 2)  # y independent of b
    train = Split.from_numpy(_images(y_tr, b_tr, gen, noise), y_tr, b_tr, np.arange(n_train))
    test = Split.from_numpy(_images(y_te, b_te, gen, noise), y_te, b_te, np.arange(n_test))
    return DataBundle("corner_stripes", train, test, num_classes=2, num_bias=2, input_shape=(1, 8, 8),
                      description="stripes with a spurious bright corner")
