"""Image transforms for augmentation and robustness curves, as small pure JAX functions.

Conventions. Images are flattened squares ``(..., D)`` float32, ``D = side**2`` (28x28 for
MNIST), ink light (1) on a dark (0) background. Pixel ``(row, col)`` sits at flat index
``row * side + col``; rows grow downwards, columns to the right. Everything outside the frame
is background: samples taken there are 0. The centre of the frame is
``c = ((side - 1) / 2, (side - 1) / 2)``.

Geometry. Every geometric transform is a *sampling map*: output pixel ``p`` takes the bilinear
interpolation of the input at ``q(p)``. An affine map is stored as a ``(2, 3)`` matrix
``[A | b]`` acting on coordinates relative to the centre::

    q = c + A @ (p - c) + b

so ``A = I, b = 0`` gives ``q = p`` bit for bit, and bilinear weights at integer ``q`` are
exactly 1 and 0: every transform at its identity strength returns its input exactly.
``affine_matrix`` builds ``[A | b]`` as the inverse of the forward (content) transform
``p = c + R(theta) S(s) H(h) (q - c) + t``: positive ``rotation_deg`` turns the content
counter-clockwise as displayed (90 degrees equals ``np.rot90(image)``), ``scale > 1`` enlarges
it, positive ``shear_deg`` slants it like italics (top to the right), and ``t = (rows, cols)``
moves it down and to the right.

Every function is jit-able and vmap-able, and every strength may be a traced value (one compile
serves a whole robustness curve). Randomness comes only from an explicit ``key``.

Cost, inside the compiled training epoch on a 2-core CPU (``experiments/epoch_speed.py``, see
docs/performance.md): ``random_affine`` makes an epoch of 784-800-10 at batch 128 1.1 times as
long, one of 784-100-10 at batch 64 1.3 times; that is the bilinear resampling, four gathers
per output pixel (of uint8 pixels, which ``bilinear`` samples as their byte values).
``augment`` with the elastic field: 1.2 and 1.9 times. The field's noise is 100 draws per
image and axis on a coarse lattice (``elastic_field``), by Threefry written out round by round
(``threefry2x32``); drawn on every pixel with ``jax.random`` it made these 1.8 and 4.9. Chaining ``elastic(random_affine(...))`` in one jit costs several times ``augment``.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxdigits.core.dataset import MNIST_SIDE

Array = jax.Array
DEFAULT_SIDE = MNIST_SIDE  # the side of an image whose size is not given


# --- geometry ------------------------------------------------------------------------------


def image_side(images: Array) -> int:
    """The side ``isqrt(D)`` of square images ``(..., D)``; raises if ``D`` is not a square."""
    size = images.shape[-1]
    side = math.isqrt(size)
    if side * side != size:
        raise ValueError(f"images have {size} pixels on their last axis, not a square number")
    return side


def pixel_grid(side: int = DEFAULT_SIDE) -> tuple[Array, Array]:
    """Row and column coordinates of every pixel, each ``(side * side,)`` float32, row-major."""
    rows, cols = jnp.divmod(jnp.arange(side * side), side)
    return rows.astype(jnp.float32), cols.astype(jnp.float32)


def bilinear(images: Array, rows: Array, cols: Array) -> Array:
    """Sample ``images (..., D)`` at points ``(rows, cols)``, each ``(P,)``; returns ``(..., P)``.

    With ``r0 = floor(row)``, ``wr = row - r0`` (likewise ``c0``, ``wc``) and ``x = 0`` outside
    the frame: ``top = (1-wc) x[r0, c0] + wc x[r0, c0+1]``, ``bottom`` the same on row
    ``r0 + 1``, and ``v = (1-wr) top + wr bottom``. At integer points the weights are exactly
    1 and 0, and as ``(1 - w) + w = 1`` holds in float32 here, values in [0, 1] stay in [0, 1].
    uint8 images are sampled as their byte values, in float32.
    """
    side = image_side(images)
    dtype = images.dtype if jnp.issubdtype(images.dtype, jnp.floating) else jnp.float32  # bytes: float32
    # Far-away points (even infinite ones) stay out of the frame but give finite indices.
    rows = jnp.clip(rows, -2.0, side + 1.0)
    cols = jnp.clip(cols, -2.0, side + 1.0)
    r0, c0 = jnp.floor(rows), jnp.floor(cols)
    wr, wc = (rows - r0).astype(dtype), (cols - c0).astype(dtype)
    r0, c0 = r0.astype(jnp.int32), c0.astype(jnp.int32)

    def pixel(r: Array, c: Array) -> Array:
        inside = (r >= 0) & (r < side) & (c >= 0) & (c < side)
        index = jnp.clip(r, 0, side - 1) * side + jnp.clip(c, 0, side - 1)
        return jnp.where(inside, jnp.take(images, index, axis=-1), jnp.zeros((), images.dtype))

    top = (1 - wc) * pixel(r0, c0) + wc * pixel(r0, c0 + 1)
    bottom = (1 - wc) * pixel(r0 + 1, c0) + wc * pixel(r0 + 1, c0 + 1)
    return (1 - wr) * top + wr * bottom


def affine_points(matrix: Array, rows: Array, cols: Array, side: int = DEFAULT_SIDE) -> tuple[Array, Array]:
    """``q = c + A (p - c) + b`` for points ``p = (rows, cols)`` (any equal shapes), ``matrix = [A | b]``.

    Written out element by element (no matmul, so no reduced-precision matmul on accelerators):
    ``A = I, b = 0`` gives ``q = p`` exactly for pixel centres, as ``p - c`` is then a multiple
    of 1/2 and ``0 * x = 0``.
    """
    matrix = jnp.asarray(matrix, jnp.float32)
    centre = (side - 1) / 2
    dr, dc = rows - centre, cols - centre
    q_rows = centre + (matrix[0, 0] * dr + matrix[0, 1] * dc + matrix[0, 2])
    q_cols = centre + (matrix[1, 0] * dr + matrix[1, 1] * dc + matrix[1, 2])
    return q_rows, q_cols


def warp(images: Array, transform: Array) -> Array:
    """Resample ``images (..., D)`` through one sampling map; returns ``(..., D)``.

    ``transform`` is either an affine matrix ``[A | b] (2, 3)`` (see ``affine_points``)
    or the sampling points themselves, ``(2, D)`` or ``(2, side, side)`` as (rows, cols).
    Output pixel ``p`` is ``bilinear(images, q(p))``; zeros come in from outside the frame.
    Vmap over images and transforms together for one transform per image.
    """
    side = image_side(images)
    transform = jnp.asarray(transform, jnp.float32)
    if transform.shape == (2, 3):
        rows, cols = affine_points(transform, *pixel_grid(side), side)
    elif transform.shape in ((2, side * side), (2, side, side)):
        rows, cols = transform.reshape(2, side * side)
    else:
        raise ValueError(f"transform must be (2, 3) or (2, {side * side}), got {transform.shape}")
    return bilinear(images, rows, cols)


def sincos_degrees(degrees: Array) -> tuple[Array, Array]:
    """``(sin, cos)`` of an angle in degrees, exact at multiples of 90 degrees.

    ``degrees = 90 k + d`` with ``|d| <= 45``: the quarter turn ``k`` is applied by swapping
    and negating ``(sin d, cos d)``, so 90 degrees gives exactly ``(1, 0)``.
    """
    degrees = jnp.asarray(degrees, jnp.float32)
    quarter = jnp.round(degrees / 90.0)
    rest = jnp.deg2rad(degrees - 90.0 * quarter)
    s, c = jnp.sin(rest), jnp.cos(rest)
    k = quarter.astype(jnp.int32) % 4
    sin = jnp.select([k == 0, k == 1, k == 2], [s, c, -s], -c)
    cos = jnp.select([k == 0, k == 1, k == 2], [c, -s, -c], s)
    return sin, cos


def affine_matrix(
    rotation_deg: Array = 0.0,
    scale: Array = 1.0,
    shear_deg: Array = 0.0,
    shift_rows: Array = 0.0,
    shift_cols: Array = 0.0,
) -> Array:
    """The sampling matrix ``[A | b] (2, 3)`` of a forward transform ``p = c + F (q - c) + t``.

    ``F = R(theta) S(s) H(h)``: shear ``H = [[1, 0], [-tan h, 1]]`` (rows stay, columns slant),
    then scale ``S = s I``, then rotation ``R = [[cos, -sin], [sin, cos]]`` (counter-clockwise
    as displayed, rows pointing down), then shift ``t = (shift_rows, shift_cols)``. The
    sampling map is its inverse: ``A = F^-1 = H^-1 S^-1 R^-1``, ``b = -A t``, i.e.
    ``A = (1/s) [[cos, sin], [tan h cos - sin, tan h sin + cos]]``. All-zero settings with
    ``scale = 1`` give exactly ``[I | 0]``.
    """
    sin, cos = sincos_degrees(rotation_deg)
    tan = jnp.tan(jnp.deg2rad(jnp.asarray(shear_deg, jnp.float32)))
    inverse_scale = 1.0 / jnp.asarray(scale, jnp.float32)
    a = inverse_scale * jnp.array([[cos, sin], [tan * cos - sin, tan * sin + cos]])
    t = jnp.array([shift_rows, shift_cols], jnp.float32)
    b = -(a[:, 0] * t[0] + a[:, 1] * t[1])
    return jnp.concatenate([a, b[:, None]], axis=1)


def affine(
    images: Array,
    rotation_deg: Array = 0.0,
    scale: Array = 1.0,
    shear_deg: Array = 0.0,
    shift_rows: Array = 0.0,
    shift_cols: Array = 0.0,
) -> Array:
    """One affine setting applied to every image of ``images (..., D)``; returns ``(..., D)``.

    See ``affine_matrix`` for the meaning and direction of each setting.
    """
    return warp(images, affine_matrix(rotation_deg, scale, shear_deg, shift_rows, shift_cols))


# --- random augmentation -------------------------------------------------------------------


def random_affine_matrices(
    key: Array,
    num: int,
    rotation_deg: Array = 0.0,
    scale: Array = 0.0,
    shear_deg: Array = 0.0,
    shift_px: Array = 0.0,
) -> Array:
    """``num`` random sampling matrices ``(num, 2, 3)``; see ``random_affine`` for the draws."""
    u = uniform_noise(key, (num, 5))
    rotation = u[:, 0] * rotation_deg
    scales = jnp.exp(u[:, 1] * jnp.log1p(jnp.asarray(scale, jnp.float32)))
    shear = u[:, 2] * shear_deg
    shift_rows, shift_cols = u[:, 3] * shift_px, u[:, 4] * shift_px
    return jax.vmap(affine_matrix)(rotation, scales, shear, shift_rows, shift_cols)


def random_affine(
    key: Array,
    images: Array,
    rotation_deg: Array = 0.0,
    scale: Array = 0.0,
    shear_deg: Array = 0.0,
    shift_px: Array = 0.0,
) -> Array:
    """A random affine distortion per image of ``images (N, D)``; returns ``(N, D)``.

    Each image draws, independently, ``rotation ~ U(-rotation_deg, rotation_deg)``,
    ``log s ~ U(-log(1 + scale), log(1 + scale))`` (so ``s`` in ``[1/(1+scale), 1+scale]``),
    ``shear ~ U(-shear_deg, shear_deg)`` and a shift ``~ U(-shift_px, shift_px)`` pixels on
    each axis. Each draw is ``u * strength`` with ``u ~ U(-1, 1)``, so all-zero strengths
    return ``images`` exactly.
    """
    matrices = random_affine_matrices(key, images.shape[0], rotation_deg, scale, shear_deg, shift_px)
    return jax.vmap(warp)(images, matrices)


def smoothing_matrix(sigma: Array, side: int = DEFAULT_SIDE) -> Array:
    """``K (side, side)``: Gaussian smoothing of one axis with zero padding, ``y = K @ x``.

    ``K[i, j] = g(i - j) / sum_{|d| <= r} g(d)`` with ``g(d) = exp(-d^2 / (2 sigma^2))``,
    truncated at ``|d| <= r = 3 sigma`` (and at the frame: taps beyond ``side - 1`` only ever
    meet the zero padding). ``sigma = 0`` gives ``I``. ``sigma`` may be traced. It is
    ``lattice_kernel(sigma, side, side)``, the lattice of one point per pixel.
    """
    return lattice_kernel(sigma, side, side)


# --- noise for the elastic field -----------------------------------------------------------

THREEFRY_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
LATTICE_CELL = 3  # pixels: the elastic noise lattice has cells of at most this width
COARSE_SIGMA = 0.9  # in cells: from this sigma on, the coarse lattice's covariance is the pixel one's


def threefry2x32(key: tuple[Array, Array], x0: Array, x1: Array) -> tuple[Array, Array]:
    """Threefry-2x32, 20 rounds, of counter pairs ``(x0, x1)`` (uint32, equal shapes) under
    ``key = (k0, k1)``: the generator of ``jax.random``, bit for bit (Salmon, Moraes, Dror and
    Shaw 2011, "Parallel random numbers: as easy as 1, 2, 3").

    With ``ks = (k0, k1, k0 ^ k1 ^ 0x1BD11BDA)``: ``x0 += ks[0]``, ``x1 += ks[1]``; then five
    groups ``i = 0..4`` of four rounds ``x0 += x1; x1 = rotl(x1, r) ^ x0`` with ``r`` from
    ``(13, 15, 26, 6)`` (even ``i``) or ``(17, 29, 16, 24)`` (odd ``i``), each group followed by
    ``x0 += ks[(i + 1) % 3]``, ``x1 += ks[(i + 2) % 3] + i + 1``. Written out round by round, so
    XLA fuses it into one elementwise loop; JAX lowers it on CPU as a rolled loop of five steps,
    each a kernel of its own, several times slower.
    """
    k0, k1 = key
    schedule = (k0, k1, k0 ^ k1 ^ jnp.uint32(0x1BD11BDA))
    x0, x1 = x0 + schedule[0], x1 + schedule[1]
    for group in range(5):
        for r in THREEFRY_ROTATIONS[group % 2]:
            x0 = x0 + x1
            x1 = ((x1 << r) | (x1 >> (32 - r))) ^ x0
        x0 = x0 + schedule[(group + 1) % 3]
        x1 = x1 + schedule[(group + 2) % 3] + jnp.uint32(group + 1)
    return x0, x1


def key_words(key: Array) -> tuple[Array, Array]:
    """The two uint32 words of a threefry ``key``, raw (``jax.random.PRNGKey``, ``(2,)``) or typed
    (``jax.random.key``); a typed key of another implementation gives two words drawn from it."""
    data = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    if data.shape != (2,) or data.dtype != jnp.uint32:
        data = jax.random.bits(key, (2,), jnp.uint32)
    return data[0], data[1]


def uniform_noise(key: Array, shape: tuple[int, ...]) -> Array:
    """``U(-1, 1)`` float32 noise of ``shape`` from ``key``, deterministic per key.

    Word ``j`` of ``threefry2x32(key_words(key), 0, c)`` over counters ``c = 0 .. ceil(n/2) - 1``
    (first outputs, then second ones) becomes ``2 f - 3`` with ``f = 1 + (w >> 9) 2^-23`` in
    [1, 2), the word's 23 high bits as the mantissa (as ``jax.random.uniform`` does): values
    ``-1 + k 2^-22``, ``k = 0 .. 2^23 - 1``, mean ``-2^-23``, variance ``1/3`` to 1e-7.
    """
    size = math.prod(shape)
    counters = lax.iota(jnp.uint32, (size + 1) // 2)
    first, second = threefry2x32(key_words(key), jnp.zeros_like(counters), counters)
    words = jnp.concatenate([first, second])[:size]
    mantissa = lax.bitcast_convert_type((words >> 9) | jnp.uint32(0x3F800000), jnp.float32)
    return (2.0 * mantissa - 3.0).reshape(shape)


def lattice_size(side: int) -> int:
    """Noise-lattice points per axis for ``side`` pixels: ``ceil(side / 3)`` (10 for 28)."""
    return max(1, -(-side // LATTICE_CELL))


def lattice_kernel(sigma: Array, side: int, count: int) -> Array:
    """``K (side, count)``: the weight of noise-lattice point ``j`` at pixel ``i`` of one axis.

    ``count`` points at the centres ``t_j = (j + 1/2) s - 1/2`` of equal cells of width
    ``s = side / count`` tiling the frame ``[-1/2, side - 1/2]``, and
    ``K[i, j] = sqrt(s) g(i - t_j) / Z`` with ``g(d) = exp(-d^2 / (2 sigma^2))`` truncated at
    ``|d| <= 3 sigma``, ``Z = sum g(d)`` over whole pixels ``|d| <= 3 sigma``. White noise of
    variance ``v`` on the lattice, smoothed by ``K``, has covariance ``v s sum_j g(i - t_j)
    g(i' - t_j) / Z^2``: a midpoint rule, with step ``s``, for the pixel lattice's ``v sum_d
    g(i - d) g(i' - d) / Z^2`` (``count = side``: ``s = 1``, ``t_j = j``, the
    ``smoothing_matrix``, bit for bit). By Poisson summation the two differ by a relative
    ``2 exp(-pi^2 sigma^2 / s^2)`` inside the frame (below 1e-3 for ``sigma >= 0.9 s``), more
    within ``3 sigma`` of its edge (variance up to 2 % higher at ``sigma = 3, s = 2.8``).
    """
    sigma = jnp.asarray(sigma, jnp.float32)
    spacing = side / count
    # Divisions only of scalars: XLA's CPU code divides arrays by multiplying with a rounded
    # reciprocal, in some programs and not others (one device alone, or one of several), and
    # the kernel must be the same bits wherever it is computed (exact sweeps equal ``train``).
    exponent = -0.5 / sigma**2
    d = jnp.arange(-(side - 1), side, dtype=jnp.float32)
    g = jnp.where(d == 0, 1.0, jnp.exp(d**2 * exponent))
    total = jnp.where(jnp.abs(d) <= 3 * sigma, g, 0.0).sum()
    points = -0.5 + spacing * (jnp.arange(count, dtype=jnp.float32) + 0.5)
    offsets = jnp.arange(side, dtype=jnp.float32)[:, None] - points[None, :]
    k = jnp.where(offsets == 0, 1.0, jnp.exp(offsets**2 * exponent))
    k = jnp.where(jnp.abs(offsets) <= 3 * sigma, k, 0.0)
    return k * (math.sqrt(spacing) / total)


def lattice_field(key: Array, num: int, alpha: Array, sigma: Array, side: int, count: int) -> Array:
    """``alpha K W K^T (num, 2, side, side)`` for ``K = lattice_kernel(sigma, side, count)`` and
    ``W (count, count) ~ U(-1, 1)`` per image and axis, from ``uniform_noise(key)``.

    Two plain matrix products over the whole batch: ``V = U (alpha K)^T`` on the rows of the
    drawn noise ``U (num * 2 * count, count)``, then ``V_b^T K^T`` per image and axis ``b``
    (so ``W_b = U_b^T``, as random as ``U_b``). ``alpha = 0`` gives exact zeros.
    """
    k = lattice_kernel(sigma, side, count)
    noise = uniform_noise(key, (num * 2 * count, count))
    rows = jnp.matmul(noise, (alpha * k).T, precision=lax.Precision.HIGHEST).reshape(num * 2, count, side)
    columns = jnp.transpose(rows, (0, 2, 1)).reshape(num * 2 * side, count)
    return jnp.matmul(columns, k.T, precision=lax.Precision.HIGHEST).reshape(num, 2, side, side)


def elastic_field(key: Array, num: int, alpha: Array, sigma: Array, side: int = DEFAULT_SIDE) -> Array:
    """Displacements ``(num, 2, side, side)`` (rows, cols) in pixels, after Simard et al. 2003.

    Noise ``U(-1, 1)`` smoothed along both axes by a Gaussian of width ``sigma`` (zero padding
    beyond the frame) and multiplied by ``alpha``: ``lattice_field``. From ``sigma >= 0.9 s``
    with ``s = side / ceil(side / 3)`` (2.52 pixels for ``side = 28``, ``s = 2.8``), the noise
    lives on a lattice of ``ceil(side / 3)`` points per axis (100 draws per image and axis
    instead of 784; ``lattice_kernel`` says why the covariance stays); below, on every pixel,
    where the field is ``alpha K u K^T`` with ``K = smoothing_matrix(sigma)``. ``sigma`` may be
    traced (a ``lax.cond`` picks the lattice). ``alpha = 0`` gives exact zeros.
    """
    count = lattice_size(side)
    coarse = jnp.asarray(sigma, jnp.float32) >= COARSE_SIGMA * side / count
    return lax.cond(coarse, lambda: lattice_field(key, num, alpha, sigma, side, count),
                    lambda: lattice_field(key, num, alpha, sigma, side, side))


def elastic(key: Array, images: Array, alpha: Array, sigma: Array) -> Array:
    """Elastic distortion (Simard, Steinkraus and Platt 2003) of ``images (N, D)``; ``(N, D)``.

    Each image gets its own field ``delta = alpha * G_sigma * U(-1, 1)`` (``elastic_field``)
    and output pixel ``p`` samples the input at ``p + delta(p)``, bilinearly. Typical settings:
    ``alpha = 34, sigma = 4`` (Simard's) and the milder ``alpha = 8, sigma = 3``. ``alpha = 0``
    returns ``images`` exactly. Both ``alpha`` and ``sigma`` may be traced.
    """
    side = image_side(images)
    field = elastic_field(key, images.shape[0], alpha, sigma, side)
    rows, cols = pixel_grid(side)
    coordinates = jnp.stack([rows, cols]) + field.reshape(-1, 2, side * side)
    return jax.vmap(warp)(images, coordinates)


def augment(
    key: Array,
    images: Array,
    rotation_deg: Array = 0.0,
    scale: Array = 0.0,
    shear_deg: Array = 0.0,
    shift_px: Array = 0.0,
    alpha: Array = 0.0,
    sigma: Array = 4.0,
) -> Array:
    """``random_affine`` then ``elastic`` of ``images (N, D)`` in a single resampling; ``(N, D)``.

    With ``k_affine, k_elastic = jax.random.split(key)``, output pixel ``p`` samples the input
    at ``q = c + A (p + delta(p) - c) + b``: the map of ``elastic(k_elastic,
    random_affine(k_affine, images, ...), alpha, sigma)`` but interpolated once, not twice.
    That is both sharper and, under jit on CPU, much faster than chaining the two (XLA fuses
    the first resampling into the gathers of the second and recomputes it per tap).
    All-zero strengths return ``images`` exactly.
    """
    side = image_side(images)
    num = images.shape[0]
    affine_key, elastic_key = jax.random.split(key)
    matrices = random_affine_matrices(affine_key, num, rotation_deg, scale, shear_deg, shift_px)
    field = elastic_field(elastic_key, num, alpha, sigma, side).reshape(num, 2, side * side)
    rows, cols = pixel_grid(side)
    points = jax.vmap(affine_points, (0, 0, 0, None))(matrices, rows + field[:, 0], cols + field[:, 1], side)
    return jax.vmap(warp)(images, jnp.stack(points, axis=1))


# --- robustness transforms -----------------------------------------------------------------


def gaussian_noise(key: Array, images: Array, sigma: Array) -> Array:
    """``clip(x + sigma * z, 0, 1)``, ``z ~ N(0, 1)`` per pixel, for ``images (..., D)`` in [0, 1].

    ``sigma = 0`` returns images in [0, 1] exactly.
    """
    noise = jax.random.normal(key, images.shape, images.dtype)
    return jnp.clip(images + sigma * noise, 0.0, 1.0)


def rotate(images: Array, degrees: Array) -> Array:
    """Turn the content of ``images (..., D)`` counter-clockwise (as displayed) about the centre.

    ``rotate(x, 90)`` equals ``np.rot90`` of each image; corners come in as zeros.
    """
    return affine(images, rotation_deg=degrees)


def shift(images: Array, rows: Array, cols: Array) -> Array:
    """Move the content of ``images (..., D)`` by ``rows`` down and ``cols`` right (pixels).

    Whole pixels move exactly; fractions interpolate bilinearly; zeros come in at the edges.
    """
    return affine(images, shift_rows=rows, shift_cols=cols)


def scale(images: Array, factor: Array) -> Array:
    """Enlarge (``factor > 1``) or shrink the content of ``images (..., D)`` about the centre.

    Output pixel ``p`` samples the input at ``c + (p - c) / factor``.
    """
    return affine(images, scale=factor)


def _max_filter(images: Array) -> Array:
    """3x3 maximum over ``images (M, side, side)``, with zeros outside the frame."""
    padded = jnp.pad(images, ((0, 0), (1, 1), (1, 1)))
    return lax.reduce_window(padded, -jnp.inf, lax.max, (1, 3, 3), (1, 1, 1), "VALID")


def thickness(images: Array, steps: Array) -> Array:
    """Thicken (``steps > 0``) or thin (``steps < 0``) the strokes of ``images (..., D)``.

    Applies ``|steps|`` times a 3x3 maximum filter (dilation) or minimum filter (erosion, as
    ``-max(-x)``), counting the outside of the frame as background 0. ``steps`` is rounded to
    an integer and may be traced (a ``lax.fori_loop``); ``steps = 0`` returns ``images``.
    """
    side = image_side(images)
    steps = jnp.round(jnp.asarray(steps)).astype(jnp.int32)
    sign = jnp.where(steps < 0, -1.0, 1.0).astype(images.dtype)
    squares = images.reshape(-1, side, side)
    squares = sign * lax.fori_loop(0, jnp.abs(steps), lambda _, x: _max_filter(x), sign * squares)
    return squares.reshape(images.shape)


def _patch_mask(side: int, size: Array, row: Array, col: Array) -> Array:
    """``(..., D)`` bool: pixels with ``row <= r < row + size`` and ``col <= c < col + size``."""
    rows, cols = pixel_grid(side)
    row, col = jnp.asarray(row, jnp.float32)[..., None], jnp.asarray(col, jnp.float32)[..., None]
    return (rows >= row) & (rows < row + size) & (cols >= col) & (cols < col + size)


def occlude(images: Array, size: Array, row: Array | None = None, col: Array | None = None) -> Array:
    """Black out a ``size`` x ``size`` square of every image in ``images (..., D)``.

    ``(row, col)`` is its top-left pixel, by default ``(side - size) // 2`` on each axis (the
    centred patch). ``size = 0`` returns ``images`` exactly. All arguments may be traced.
    """
    side = image_side(images)
    centred = (side - jnp.asarray(size, jnp.int32)) // 2
    row = centred if row is None else row
    col = centred if col is None else col
    return jnp.where(_patch_mask(side, size, row, col), jnp.zeros((), images.dtype), images)


def random_occlude(key: Array, images: Array, size: Array) -> Array:
    """Black out a ``size`` x ``size`` square at a random place, inside the frame, per image.

    Each of ``images (N, D)`` draws its top-left pixel uniformly from ``0 .. side - size`` on
    both axes. ``size = 0`` returns ``images`` exactly; ``size`` may be traced.
    """
    side = image_side(images)
    size = jnp.asarray(size, jnp.int32)
    corner = jax.random.randint(key, (images.shape[0], 2), 0, side - size + 1)
    return jnp.where(_patch_mask(side, size, corner[:, 0], corner[:, 1]), 0.0, images).astype(images.dtype)


class Perturbation(NamedTuple):
    """One robustness axis: ``apply(key, images (N, D), strength) -> (N, D)``, its identity
    strength, and default strengths for a curve (a plain tuple, unpackable as such)."""

    apply: Callable[[Array, Array, Array], Array]
    identity: float
    strengths: tuple[float, ...]


ROBUSTNESS: dict[str, Perturbation] = {
    "noise": Perturbation(gaussian_noise, 0.0, tuple(i / 10 for i in range(11))),
    "rotation": Perturbation(lambda key, x, s: rotate(x, s), 0.0, tuple(float(d) for d in range(-45, 46, 5))),
    "shift": Perturbation(lambda key, x, s: shift(x, 0.0, s), 0.0, tuple(float(d) for d in range(-6, 7))),
    "scale": Perturbation(lambda key, x, s: scale(x, s), 1.0, tuple(i / 10 for i in range(6, 15))),
    "thickness": Perturbation(lambda key, x, s: thickness(x, s), 0, (-2, -1, 0, 1, 2)),
    "occlusion": Perturbation(random_occlude, 0, tuple(range(0, 17, 2))),
}
"""Name -> ``(apply(key, images, strength), identity strength, default strengths)``: noise
sigma 0..1, rotation -45..45 degrees, horizontal shift -6..6 pixels (positive: right), scale
0.6..1.4, stroke thickness -2..2 filter steps, and a random-place occluding square of 0..16
pixels. Every ``apply`` takes a traced strength, so ``jax.vmap(apply, (None, None, 0))`` gives
a whole curve from one compile."""
