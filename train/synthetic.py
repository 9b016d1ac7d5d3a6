"""Generated datasets: boolean parity and moon-vs-star images (no files needed)."""

from __future__ import annotations

import math

import numpy as np

from ..errors import ConfigError
from .recipes import (
    MAX_IMAGE_SIZE,
    MAX_SAMPLES,
    RHO_TEST,
    DataBundle,
    Split,
    balanced_labels,
    option,
    register_dataset,
)


# ------------------------------------------------------------------------------- parity
def _bits_with_parity(parity: np.ndarray, k: int, gen: np.random.Generator) -> np.ndarray:
    """Uniform random {0,1}^k rows conditioned on their parity (sum mod 2) being `parity`."""
    bits = gen.integers(0, 2, size=(len(parity), k))
    wrong = bits.sum(1) % 2 != parity
    bits[wrong, 0] ^= 1  # flipping one bit fixes parity and keeps the row uniform on its coset
    return bits


def _check_parity(o: dict) -> None:
    if o["spurious_bits"] >= o["core_bits"]:
        raise ConfigError(f"parity needs spurious_bits < core_bits (got S={o['spurious_bits']}, C={o['core_bits']})")
    d = o["core_bits"] + o["spurious_bits"] + o["noise_bits"]
    n = (o["n_train"] + o["n_test"]) * d
    if n > 2**30:
        raise ConfigError(f"parity with {o['n_train']} + {o['n_test']} samples of {d} bits is too large "
                          f"({n * 4 / 1e9:.1f} GB of float32 inputs; the limit is {2**30 * 4 / 1e9:.1f} GB)")


@register_dataset("parity", rho_train=0.1, check=_check_parity, options={
    "rho_test": RHO_TEST,
    "n_train": option(int, lo=1, hi=MAX_SAMPLES, help="training samples"),
    "n_test": option(int, lo=1, hi=MAX_SAMPLES, help="test samples"),
    "core_bits": option(int, lo=1, hi=64, help="C: y is their parity"),
    "spurious_bits": option(int, lo=1, hi=63, help="S < C: b is their parity"),
    "noise_bits": option(int, lo=0, hi=2**16, help="N uniform bits"),
})
def parity(
    *,
    seed: int,
    rho_train: float,
    rho_test: float = 0.5,
    n_train: int = 10000,
    n_test: int = 10000,
    core_bits: int = 4,
    spurious_bits: int = 1,
    noise_bits: int = 30,
) -> DataBundle:
    """Boolean parity task (Qiu et al. 2024 style, as used by Barsbey et al.).

    Inputs are ±1 vectors ``[core | spurious | noise]``; y is the parity of the C core bits,
    b the parity of the S spurious bits (S < C makes the shortcut simpler), noise bits are
    uniform. ρ is exact: round(ρ·n) samples have b ≠ y. The paper does not give C, S, N; the
    defaults are our calibration (see docs/replication.md).
    """
    if spurious_bits >= core_bits:
        raise ConfigError(f"parity needs spurious_bits < core_bits (got S={spurious_bits}, C={core_bits})")
    for nm, v in (("core_bits", core_bits), ("spurious_bits", spurious_bits), ("n_train", n_train), ("n_test", n_test)):
        if v < 1:
            raise ConfigError(f"parity option {nm} must be >= 1, got {v}")
    if noise_bits < 0:
        raise ConfigError(f"parity option noise_bits must be >= 0, got {noise_bits}")
    gen = np.random.default_rng([seed, 7001])

    def split(n: int, rho: float) -> Split:
        y, b = balanced_labels(n, rho, 2, gen)
        bits = np.concatenate(
            [_bits_with_parity(y, core_bits, gen), _bits_with_parity(b, spurious_bits, gen),
             gen.integers(0, 2, size=(n, noise_bits))], axis=1)
        return Split.from_numpy((2 * bits - 1).astype(np.float32), y, b, np.arange(n))

    d = core_bits + spurious_bits + noise_bits
    regions = {name: np.zeros(d, dtype=bool) for name in ("core", "spurious", "noise")}
    regions["core"][:core_bits] = True
    regions["spurious"][core_bits:core_bits + spurious_bits] = True
    regions["noise"][core_bits + spurious_bits:] = True
    return DataBundle("parity", split(n_train, rho_train), split(n_test, rho_test), 2, 2, (d,), regions,
                      f"parity C={core_bits} S={spurious_bits} N={noise_bits}")


# ------------------------------------------------------------------------------- moon-star
def _render_shapes(y: np.ndarray, b: np.ndarray, size: int, noise: float, gen: np.random.Generator) -> np.ndarray:
    """Render a moon (y=0) or a five-pointed star (y=1) in the quadrant picked by b
    (b=0 top-left, b=1 bottom-right), with random scale, rotation, position jitter and noise."""
    n = len(y)
    half = size / 2
    cy = np.where(b == 0, half / 2, 3 * half / 2) + gen.uniform(-1.5, 1.5, n)
    cx = np.where(b == 0, half / 2, 3 * half / 2) + gen.uniform(-1.5, 1.5, n)
    r = half * gen.uniform(0.32, 0.42, n)
    rot = gen.uniform(0, 2 * math.pi, n)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    dy = yy[None] - cy[:, None, None]
    dx = xx[None] - cx[:, None, None]
    rho = np.sqrt(dx**2 + dy**2) / r[:, None, None]
    theta = np.arctan2(dy, dx) - rot[:, None, None]
    # star: radius oscillates between 0.45 and 1 with five points
    star_r = 0.45 + 0.55 * np.abs(np.cos(2.5 * theta)) ** 3
    star = rho <= star_r
    # moon: unit disk minus a disk shifted along the rotation direction
    sx = dx / r[:, None, None] - 0.55 * np.cos(rot)[:, None, None]
    sy = dy / r[:, None, None] - 0.55 * np.sin(rot)[:, None, None]
    moon = (rho <= 1.0) & (sx**2 + sy**2 > 0.75**2)
    img = np.where((y == 1)[:, None, None], star, moon).astype(np.float32)
    img = np.clip(img + noise * gen.standard_normal(img.shape).astype(np.float32), 0, 1)
    return (img * 255).round().astype(np.uint8)[:, None]  # (n, 1, size, size)


def _check_moon_star(o: dict) -> None:
    for split in ("n_train", "n_test"):
        n = o[split] * o["size"] ** 2
        if n > 2**28:
            raise ConfigError(f"moon_star with {split}={o[split]} images of {o['size']}x{o['size']} is too large to "
                              f"render ({n:,} pixels per split; the limit is {2**28:,})")


@register_dataset("moon_star", rho_train=0.1, check=_check_moon_star, options={
    "rho_test": RHO_TEST,
    "n_train": option(int, lo=1, hi=MAX_SAMPLES, help="training samples"),
    "n_test": option(int, lo=1, hi=MAX_SAMPLES, help="test samples"),
    "size": option(int, lo=8, hi=MAX_IMAGE_SIZE, help="image side in pixels"),
    "noise": option(float, lo=0, hi=100, help="std of the Gaussian pixel noise"),
})
def moon_star(
    *,
    seed: int,
    rho_train: float,
    rho_test: float = 0.5,
    n_train: int = 10000,
    n_test: int = 2000,
    size: int = 28,
    noise: float = 0.15,
) -> DataBundle:
    """Moon vs star (Kirichenko et al. style): the shape is the class, the quadrant it sits in
    is the spurious feature (ρ_train = 0.1, ρ_test = 0.5)."""
    if size < 8:
        raise ConfigError(f"moon_star option size must be >= 8, got {size}")
    gen = np.random.default_rng([seed, 7002])

    def split(n: int, rho: float) -> Split:
        y, b = balanced_labels(n, rho, 2, gen)
        return Split.from_numpy(_render_shapes(y, b, size, noise, gen), y, b, np.arange(n))

    return DataBundle("moon_star", split(n_train, rho_train), split(n_test, rho_test), 2, 2, (1, size, size),
                      {}, f"moon-star {size}x{size}")
