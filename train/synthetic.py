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


@register_dataset("parity", rho_train=0.1, fcn_widths=(200, 200, 200), draws=True, check=_check_parity, options={
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
# The shapes and layout of Geirhos et al.'s toy data (github.com/rgeirhos/shortcut-perspective,
# code/: bunny.npy is the moon, cow.npy the star; 0/1 bitmaps on a 200x200 canvas, upright, never
# rotated or rescaled, only translated). Measured on their bitmaps: the moon is a crescent opening
# to the right, 62 px tall and 42 wide (1371 px lit); the star has five points, one up, 65 px tall
# and 69 wide (2043 px lit). Drawn here from geometry, in fractions of the image side (x `scale`):
MOON_R = 0.155  # the moon's outer radius: height 2R = 0.31 of the side (62/200)
MOON_CUT = 0.72  # a disk minus the same disk shifted right by MOON_CUT * R: width 1.36 R, area 1.41 R^2
STAR_R = 0.18  # the star's outer radius: height 1.81 R = 0.33 of the side (65/200), width 1.90 R
STAR_INNER = 0.54  # its inner/outer radius ratio (their star's area; a regular pentagram has 0.38)
# Their translations put a shape's centre about a quarter of the side from two edges (0.14 - 0.31
# and 0.66 - 0.81 of the side), uniform over 14 - 31 px per axis (half-ranges 0.035 - 0.08 of the
# side). Quadrants by bias label, (row, col) halves: b = 0 is the moons' diagonal, b = 1 the stars'.
QUADRANTS = np.array([[(0, 0), (1, 1)],  # b = 0: top-left, bottom-right (moons when aligned)
                      [(0, 1), (1, 0)]])  # b = 1: top-right, bottom-left (stars when aligned)
_CHUNK_PIXELS = 2**23  # pixels rendered at once (bounds the float temporaries)


def _moon(dy: np.ndarray, dx: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Crescent opening right, its bounding box centred on (dy, dx) = 0: inside the disk of radius
    r centred at x = c, outside the same disk centred at x = c + MOON_CUT r (the box spans
    x = c - r .. c + MOON_CUT r / 2, so c = (1/2 - MOON_CUT/4) r)."""
    x = dx - (0.5 - MOON_CUT / 4) * r
    return (x**2 + dy**2 <= r**2) & ((x - MOON_CUT * r) ** 2 + dy**2 > r**2)


def _star(dy: np.ndarray, dx: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Five-pointed star, one point up, outer radius r, inner STAR_INNER r, its bounding box
    centred on 0 (the box spans y = c - r .. c + r cos 36deg below the centre c)."""
    y = dy + (1 - math.cos(math.pi / 5)) / 2 * r
    theta = np.arctan2(dx, -y) % (2 * math.pi / 5)  # angle from the up direction, folded to one point
    g = np.minimum(theta, 2 * math.pi / 5 - theta)  # 0 at an outer vertex, 36deg at an inner one
    rho = np.sqrt(dx**2 + y**2) / r
    px, py = rho * np.cos(g), rho * np.sin(g)  # the point in the frame of the outer vertex (1, 0)
    ix, iy = STAR_INNER * math.cos(math.pi / 5), STAR_INNER * math.sin(math.pi / 5)
    return (ix - 1) * py - iy * (px - 1) >= 0  # on the centre's side of the edge outer -> inner vertex


def _render_shapes(y: np.ndarray, b: np.ndarray, size: int, scale: float, jitter: float, noise: float,
                   gen: np.random.Generator) -> np.ndarray:
    """Images (n, 1, size, size) uint8: a moon (y = 0) or a star (y = 1), lit pixels 255, its
    bounding box centred in one of the two quadrants of diagonal b (picked at random), a quarter
    of the side from two edges, plus a uniform offset of up to `jitter` x side on each axis;
    then Gaussian pixel noise of std `noise`, clipped to [0, 1]."""
    n = len(y)
    quad = QUADRANTS[b, gen.integers(0, 2, n)]  # (n, 2): row half, col half
    centre = (0.25 + 0.5 * quad + gen.uniform(-jitter, jitter, (n, 2))) * size
    radius = np.where(y == 1, STAR_R, MOON_R) * scale * size
    grid = np.arange(size, dtype=np.float64) + 0.5  # pixel centres
    out = np.empty((n, 1, size, size), dtype=np.uint8)
    step = max(1, _CHUNK_PIXELS // (size * size))
    for i in range(0, n, step):
        sl = slice(i, i + step)
        dy = grid[None, :, None] - centre[sl, 0, None, None]
        dx = grid[None, None, :] - centre[sl, 1, None, None]
        r = radius[sl, None, None]
        img = np.where((y[sl] == 1)[:, None, None], _star(dy, dx, r), _moon(dy, dx, r)).astype(np.float32)
        if noise > 0:
            img = np.clip(img + noise * gen.standard_normal(img.shape, dtype=np.float32), 0, 1)
        out[sl, 0] = (img * 255).round().astype(np.uint8)
    return out


def _check_moon_star(o: dict) -> None:
    for split in ("n_train", "n_test"):
        n = o[split] * o["size"] ** 2
        if n > 2**28:
            raise ConfigError(f"moon_star with {split}={o[split]} images of {o['size']}x{o['size']} is too large to "
                              f"render ({n:,} pixels per split; the limit is {2**28:,})")


@register_dataset("moon_star", rho_train=0.1, fcn_widths=(200, 200, 200), draws=True, check=_check_moon_star, options={
    "rho_test": RHO_TEST,
    "n_train": option(int, lo=1, hi=MAX_SAMPLES, help="training samples"),
    "n_test": option(int, lo=1, hi=MAX_SAMPLES, help="test samples"),
    "size": option(int, lo=8, hi=MAX_IMAGE_SIZE, help="image side in pixels"),
    "scale": option(float, lo=0, hi=2, lo_open=True,
                    help="shape size relative to Geirhos et al.'s (moon 0.31, star 0.33 of the side)"),
    "jitter": option(float, lo=0, hi=0.25,
                     help="largest offset of a shape from its quadrant's centre, per axis, as a fraction of the side"),
    "noise": option(float, lo=0, hi=100, help="std of the Gaussian pixel noise (pixels in [0, 1])"),
})
def moon_star(
    *,
    seed: int,
    rho_train: float,
    rho_test: float = 0.5,
    n_train: int = 4000,
    n_test: int = 2000,
    size: int = 28,
    scale: float = 1.0,
    jitter: float = 0.1,
    noise: float = 0.35,
) -> DataBundle:
    """Moon vs star after Geirhos et al. (2020): the shape is the class (moon 0, star 1), its
    quadrant the spurious feature: stars top-right/bottom-left and moons top-left/bottom-right
    when bias-aligned, the other diagonal when conflicting (ρ_train = 0.1, ρ_test = 0.5).
    Upright 0/1 shapes in their proportions, translated within the quadrant; no input regions
    (the shape's own pixels carry both the class and the position cue). Defaults: our
    calibration to the paper's Table 1 accuracies (docs/moon_star.md)."""
    for nm, v in (("size", size), ("n_train", n_train), ("n_test", n_test)):
        if v < (8 if nm == "size" else 1):
            raise ConfigError(f"moon_star option {nm} must be >= {8 if nm == 'size' else 1}, got {v}")
    gen = np.random.default_rng([seed, 7002])

    def split(n: int, rho: float) -> Split:
        y, b = balanced_labels(n, rho, 2, gen)
        return Split.from_numpy(_render_shapes(y, b, size, scale, jitter, noise, gen), y, b, np.arange(n))

    return DataBundle("moon_star", split(n_train, rho_train), split(n_test, rho_test), 2, 2, (1, size, size),
                      {}, f"moon-star {size}x{size} (scale {scale:g}, jitter {jitter:g}, noise {noise:g})")
