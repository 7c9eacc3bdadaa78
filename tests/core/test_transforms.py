"""Image transforms: exact identities, directions, determinism, bounds, jit and vmap."""

from __future__ import annotations

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdigits.core import transforms as T

# Jitted once per module: also shows each takes traced strengths, and spares op-by-op dispatch.
J = SimpleNamespace(
    **{
        name: jax.jit(getattr(T, name))
        for name in (
            "affine", "augment", "elastic", "gaussian_noise", "occlude", "random_affine",
            "random_occlude", "rotate", "scale", "shift", "thickness", "warp",
        )
    }
)

SIDE = 28
CENTRE = (SIDE - 1) / 2
MILD_AFFINE = (10.0, 0.05, 10.0, 2.0)  # rotation_deg, scale, shear_deg, shift_px


def noise_images(n: int = 6, seed: int = 0) -> np.ndarray:
    """Random values in [0, 1]: every pixel differs from its neighbours, so no slip goes unseen."""
    return np.random.default_rng(seed).uniform(size=(n, SIDE * SIDE)).astype(np.float32)


def blob(row: float = 14.0, col: float = 13.0, width: float = 3.0) -> np.ndarray:
    """An MNIST-like smooth stroke blob ``(784,)`` in [0, 1], well inside the frame."""
    r, c = np.mgrid[0:SIDE, 0:SIDE]
    image = np.exp(-((r - row) ** 2 / (2 * width**2) + (c - col) ** 2 / (2 * (width / 2) ** 2)))
    return np.where(image < 0.05, 0.0, image).astype(np.float32).reshape(-1)


def digit(row: float = 14.0, col: float = 13.5, radius: float = 6.0, width: float = 1.2) -> np.ndarray:
    """A "0": an oval ring stroke ``(784,)`` in [0, 1], about as wide and inked as MNIST's."""
    r, c = np.mgrid[0:SIDE, 0:SIDE]
    image = np.exp(-((np.hypot((r - row) / 1.3, c - col) - radius) ** 2) / (2 * width**2))
    return np.where(image < 0.05, 0.0, image).astype(np.float32).reshape(-1)


def asymmetric() -> np.ndarray:
    """A 28x28 image with no symmetry: an L shape over random grey, ``(784,)``."""
    image = np.random.default_rng(1).uniform(0, 0.5, (SIDE, SIDE)).astype(np.float32)
    image[4:20, 6] = 1.0
    image[19, 6:14] = 1.0
    return image.reshape(-1)


KEY = jax.random.key(0)
BATCH = 16  # one batch shape throughout, so each jitted transform compiles once

IDENTITIES = {
    "warp identity matrix": lambda x: J.warp(x, jnp.array([[1.0, 0, 0], [0, 1.0, 0]])),
    "warp pixel grid": lambda x: J.warp(x, jnp.stack(T.pixel_grid(SIDE))),
    "affine": lambda x: J.affine(x, 0.0, 1.0, 0.0, 0.0, 0.0),
    "rotate": lambda x: J.rotate(x, 0.0),
    "rotate 360": lambda x: J.rotate(x, 360.0),
    "shift": lambda x: J.shift(x, 0.0, 0.0),
    "scale": lambda x: J.scale(x, 1.0),
    "thickness": lambda x: J.thickness(x, 0),
    "occlude": lambda x: J.occlude(x, 0),
    "random_occlude": lambda x: J.random_occlude(KEY, x, 0),
    "gaussian_noise": lambda x: J.gaussian_noise(KEY, x, 0.0),
    "random_affine": lambda x: J.random_affine(KEY, x, 0.0, 0.0, 0.0, 0.0),
    "elastic": lambda x: J.elastic(KEY, x, 0.0, 4.0),
    "augment": lambda x: J.augment(KEY, x, 0.0, 0.0, 0.0, 0.0, 0.0, 4.0),
}


@pytest.mark.parametrize("name", IDENTITIES)
def test_identity_strength_returns_input_exactly(name):
    x = noise_images(BATCH)
    np.testing.assert_array_equal(np.asarray(IDENTITIES[name](x)), x)


def test_identity_is_exact_outside_jit_too():
    x = noise_images(2)
    np.testing.assert_array_equal(np.asarray(T.affine(x)), x)


def test_affine_matrix_at_zero_settings_is_exactly_identity():
    np.testing.assert_array_equal(np.asarray(jax.jit(T.affine_matrix)()), [[1, 0, 0], [0, 1, 0]])
    sin, cos = jax.jit(T.sincos_degrees)(jnp.array([0.0, 90.0, 180.0, -90.0, 270.0]))
    np.testing.assert_array_equal(np.asarray(sin), [0, 1, 0, -1, -1])
    np.testing.assert_array_equal(np.asarray(cos), [1, 0, -1, 0, 0])


@pytest.mark.parametrize("quarter_turns", [-1, 1, 2, 3])
def test_rotation_by_quarter_turns_is_rot90_counter_clockwise(quarter_turns):
    image = asymmetric()
    rotated = np.asarray(J.rotate(image[None], 90.0 * quarter_turns))[0].reshape(SIDE, SIDE)
    expected = np.rot90(image.reshape(SIDE, SIDE), quarter_turns)
    np.testing.assert_allclose(rotated, expected, rtol=0, atol=1e-6)


def test_rotation_and_scale_of_a_linear_ramp_follow_the_sampling_map():
    """Bilinear sampling reproduces a linear image exactly, so this checks every coordinate."""
    r, c = np.mgrid[0:SIDE, 0:SIDE].astype(np.float64)
    ramp = lambda rows, cols: 0.5 + 0.012 * (rows - CENTRE) + 0.005 * (cols - CENTRE)  # noqa: E731
    image = ramp(r, c).astype(np.float32).reshape(1, -1)
    theta, factor = np.deg2rad(30.0), 1.25
    out = np.asarray(J.affine(image, rotation_deg=30.0, scale=factor))[0].reshape(SIDE, SIDE)
    # Counter-clockwise content rotation: output p samples c + R(-theta) (p - c) / factor.
    dr, dc = r - CENTRE, c - CENTRE
    q_r = CENTRE + (np.cos(theta) * dr + np.sin(theta) * dc) / factor
    q_c = CENTRE + (-np.sin(theta) * dr + np.cos(theta) * dc) / factor
    inside = (q_r >= 0) & (q_r <= SIDE - 1) & (q_c >= 0) & (q_c <= SIDE - 1)
    assert inside.sum() > 500
    np.testing.assert_allclose(out[inside], ramp(q_r, q_c)[inside], atol=1e-5)
    assert np.all(out[(q_r < -1) | (q_r > SIDE) | (q_c < -1) | (q_c > SIDE)] == 0)


def test_shift_moves_a_pixel_and_a_blob_by_exactly_the_given_pixels():
    pixel = np.zeros(SIDE * SIDE, np.float32)
    pixel[10 * SIDE + 12] = 1.0
    moved = np.asarray(J.shift(pixel[None], 2, -3))[0].reshape(SIDE, SIDE)
    expected = np.zeros((SIDE, SIDE), np.float32)
    expected[12, 9] = 1.0  # two rows down, three columns left
    np.testing.assert_array_equal(moved, expected)

    image = blob()
    moved = np.asarray(J.shift(image[None], 2.0, -3.0))[0].reshape(SIDE, SIDE)
    np.testing.assert_array_equal(moved, np.roll(image.reshape(SIDE, SIDE), (2, -3), axis=(0, 1)))


def test_shift_brings_in_zeros_at_the_edges():
    moved = np.asarray(J.shift(np.ones((1, SIDE * SIDE), np.float32), 2, -3))[0].reshape(SIDE, SIDE)
    expected = np.zeros((SIDE, SIDE), np.float32)
    expected[2:, : SIDE - 3] = 1.0
    np.testing.assert_array_equal(moved, expected)


def test_fractional_shift_interpolates_between_pixels():
    pixel = np.zeros((1, SIDE * SIDE), np.float32)
    pixel[0, 10 * SIDE + 12] = 1.0
    moved = np.asarray(J.shift(pixel, 0.0, 0.25))[0].reshape(SIDE, SIDE)
    np.testing.assert_allclose(moved[10, 12:14], [0.75, 0.25], atol=1e-6)
    assert moved.sum() == pytest.approx(1.0)


def test_scale_shrinks_and_enlarges_ink_by_the_square_of_the_factor():
    image = blob(CENTRE, CENTRE, 2.5)[None]
    ink = image.sum()
    for factor in (0.7, 1.3):
        assert np.asarray(J.scale(image, factor)).sum() == pytest.approx(ink * factor**2, rel=0.03)


def test_shear_slants_the_top_to_the_right():
    bar = np.zeros((SIDE, SIDE), np.float32)
    bar[4:24, 13:15] = 1.0
    sheared = np.asarray(J.affine(bar.reshape(1, -1), shear_deg=20.0))[0].reshape(SIDE, SIDE)
    columns = np.arange(SIDE)
    centre_of = lambda row: (sheared[row] * columns).sum() / sheared[row].sum()  # noqa: E731
    assert centre_of(6) > 13.5 + 2 and centre_of(21) < 13.5 - 2


def test_values_in_unit_interval_stay_there():
    ones = np.ones((BATCH, SIDE * SIDE), np.float32)
    out = np.stack([J.augment(jax.random.key(i), ones, 30.0, 0.3, 20.0, 4.0, 34.0, 4.0) for i in range(8)])
    assert out.min() >= 0.0 and out.max() <= 1.0


@pytest.mark.parametrize(
    "transform",
    [
        lambda key, x: J.random_affine(key, x, *MILD_AFFINE),
        lambda key, x: J.elastic(key, x, 34.0, 4.0),
        lambda key, x: J.augment(key, x, *MILD_AFFINE, 8.0, 3.0),
        lambda key, x: J.gaussian_noise(key, x, 0.2),
        lambda key, x: J.random_occlude(key, x, 6),
    ],
    ids=["random_affine", "elastic", "augment", "gaussian_noise", "random_occlude"],
)
def test_random_transforms_are_deterministic_per_key_and_differ_across_keys(transform):
    images = np.tile(digit()[None], (BATCH, 1))
    first = np.asarray(transform(jax.random.key(1), images))
    np.testing.assert_array_equal(first, np.asarray(transform(jax.random.key(1), images)))
    assert not np.array_equal(first, np.asarray(transform(jax.random.key(2), images)))
    assert not np.array_equal(first[0], first[1])  # each image draws its own distortion


@pytest.mark.parametrize(
    "transform, ink_bounds",
    [
        (lambda key, x: J.random_affine(key, x, *MILD_AFFINE), (0.8, 1.2)),
        # Simard's field (mean |displacement| about 1 pixel) is far from area-preserving: it
        # squeezes or stretches whole strokes (0.6x to 1.5x the ink on real digits, as with
        # scipy's gaussian_filter and map_coordinates), so its bound is loose.
        (lambda key, x: J.elastic(key, x, 34.0, 4.0), (0.5, 1.5)),
        (lambda key, x: J.elastic(key, x, 8.0, 3.0), (0.8, 1.2)),
        (lambda key, x: J.augment(key, x, *MILD_AFFINE, 8.0, 3.0), (0.8, 1.2)),
    ],
    ids=["random_affine", "elastic-simard", "elastic-mild", "augment"],
)
def test_distortions_change_a_digit_by_a_bounded_amount(transform, ink_bounds):
    images = np.tile(digit()[None], (BATCH, 1))
    out = np.concatenate([transform(jax.random.key(seed), images) for seed in (3, 4)])
    images = np.concatenate([images, images])
    change = np.abs(out - images).mean(axis=1)
    assert np.all(change > 1e-3) and np.all(change < 0.25)
    ink = out.sum(axis=1) / images.sum(axis=1)
    assert ink_bounds[0] < ink.min() and ink.max() < ink_bounds[1]


def test_elastic_with_a_large_sigma_and_small_alpha_moves_little():
    images = np.tile(digit()[None], (BATCH, 1))
    out = np.asarray(J.elastic(jax.random.key(4), images, 1.0, 10.0))
    assert 0 < np.abs(out - images).max() < 0.05
    field = np.asarray(jax.jit(T.elastic_field, static_argnums=1)(jax.random.key(4), BATCH, 1.0, 10.0))
    assert np.abs(field).max() < 0.1


def test_smoothing_matrix_is_a_normalised_truncated_gaussian():
    smoothing = jax.jit(T.smoothing_matrix, static_argnums=1)
    k = np.asarray(smoothing(2.0, SIDE))
    np.testing.assert_allclose(k, k.T, atol=1e-7)
    np.testing.assert_allclose(k[10:18].sum(axis=1), 1.0, rtol=1e-6)  # rows away from the edges
    assert k[14, 14 + 6] > 0 and k[14, 14 + 7] == 0  # truncated at 3 sigma
    np.testing.assert_array_equal(np.asarray(smoothing(0.0, SIDE)), np.eye(SIDE))


# --- the elastic field's noise and lattice ----------------------------------------------------

# Random123's known answers for Threefry-2x32, 20 rounds: (key, counter) -> output.
THREEFRY_KNOWN_ANSWERS = [
    ((0x00000000, 0x00000000), (0x00000000, 0x00000000), (0x6B200159, 0x99BA4EFE)),
    ((0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF), (0x1CB996FC, 0xBB002BE7)),
    ((0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0)),
]


def test_threefry_gives_the_published_known_answers_and_jax_randoms_words():
    threefry = jax.jit(T.threefry2x32)
    for key, counter, expected in THREEFRY_KNOWN_ANSWERS:
        out = threefry(tuple(np.uint32(k) for k in key), np.uint32(counter[0]), np.uint32(counter[1]))
        assert tuple(int(x) for x in out) == expected
    from jax.extend.random import threefry_2x32

    key = np.array([0x9E3779B9, 12345], np.uint32)
    counters = np.random.default_rng(2).integers(0, 2**32, 2 * 257, dtype=np.uint64).astype(np.uint32)
    first, second = threefry(tuple(key), counters[:257], counters[257:])
    np.testing.assert_array_equal(np.concatenate([first, second]), np.asarray(threefry_2x32(key, counters)))


def test_uniform_noise_is_the_mantissa_of_threefry_words():
    # PRNGKey(0) has the words (0, 0); counter (0, 0) gives the first known answer.
    expected = [2 * (1 + (w >> 9) / 2**23) - 3 for w in THREEFRY_KNOWN_ANSWERS[0][2]]
    noise = jax.jit(T.uniform_noise, static_argnums=1)
    np.testing.assert_array_equal(np.asarray(noise(jax.random.PRNGKey(0), (2,))), np.float32(expected))
    np.testing.assert_array_equal(noise(jax.random.PRNGKey(7), (5, 3)), noise(jax.random.key(7), (5, 3)))  # raw or typed key
    u = np.asarray(noise(jax.random.key(3), (400_000,)), np.float64)
    assert -1.0 <= u.min() and u.max() < 1.0
    assert abs(u.mean()) < 4 * np.sqrt(1 / 3 / u.size) and u.var() == pytest.approx(1 / 3, rel=0.01)
    counts = np.histogram(u, bins=10, range=(-1, 1))[0]
    assert np.all(np.abs(counts - u.size / 10) < 5 * np.sqrt(u.size / 10))
    assert not np.array_equal(u[:100], np.asarray(noise(jax.random.key(4), (100,))))


def test_lattice_kernel_follows_its_formula_and_is_the_smoothing_matrix_on_pixels():
    kernel = jax.jit(T.lattice_kernel, static_argnums=(1, 2))
    for sigma in (0.0, 1.0, 3.0, 4.0):
        np.testing.assert_array_equal(np.asarray(kernel(sigma, SIDE, SIDE)), np.asarray(T.smoothing_matrix(sigma, SIDE)))
    assert T.lattice_size(SIDE) == 10
    k = np.asarray(kernel(3.0, SIDE, 10), np.float64)
    d = np.arange(-9, 10)
    total = np.exp(-(d**2) / 18).sum()
    points = 2.8 * (np.arange(10) + 0.5) - 0.5  # cells of 2.8 pixels tiling [-0.5, 27.5]
    offsets = np.arange(SIDE)[:, None] - points[None, :]
    expected = np.where(np.abs(offsets) <= 9, np.sqrt(2.8) * np.exp(-(offsets**2) / 18) / total, 0.0)
    np.testing.assert_allclose(k, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("sigma", [3.0, 4.0])
def test_the_coarse_lattice_gives_the_pixel_lattices_covariance(sigma):
    """Per axis, noise variance v: covariance ``v K K^T``. Inside the frame the variances agree
    to ``2 exp(-pi^2 sigma^2 / s^2)`` (5e-5 at sigma 3 with cells of 2.8 px), at the edge to
    2.5 %; the covariances to 0.25 % of the variance inside (the Gaussian is cut at 3 sigma),
    2 % at the edge."""
    coarse = np.asarray(T.lattice_kernel(sigma, SIDE, 10), np.float64)
    fine = np.asarray(T.smoothing_matrix(sigma, SIDE), np.float64)
    c_coarse, c_fine = coarse @ coarse.T, fine @ fine.T
    inner = slice(int(3 * sigma), SIDE - int(3 * sigma))
    np.testing.assert_allclose(np.diag(c_coarse)[inner], np.diag(c_fine)[inner], rtol=2e-4)
    np.testing.assert_allclose(np.diag(c_coarse), np.diag(c_fine), rtol=0.025)
    np.testing.assert_allclose(c_coarse[inner, inner], c_fine[inner, inner], rtol=0, atol=2.5e-3 * c_fine.max())
    np.testing.assert_allclose(c_coarse, c_fine, rtol=0, atol=0.02 * c_fine.max())


def test_elastic_field_is_alpha_k_w_kt_on_the_lattice_sigma_picks():
    field = jax.jit(T.elastic_field, static_argnums=1)
    key = jax.random.key(9)
    for sigma, count in ((2.4, SIDE), (2.6, 10), (4.0, 10)):  # the coarse lattice from 0.9 * 2.8 = 2.52 px
        noise = np.asarray(T.uniform_noise(key, (3 * 2 * count, count)), np.float64).reshape(6, count, count)
        k = np.asarray(T.lattice_kernel(sigma, SIDE, count), np.float64)
        expected = 5.0 * np.einsum("ij,bkj,lk->bil", k, noise, k).reshape(3, 2, SIDE, SIDE)
        np.testing.assert_allclose(np.asarray(field(key, 3, 5.0, sigma)), expected, atol=2e-5)
    for sigma in (2.0, 3.0):
        np.testing.assert_array_equal(np.asarray(field(key, 3, 0.0, sigma)), 0.0)


def test_elastic_field_statistics_match_smoothed_uniform_noise():
    """Inside the frame, ``alpha K u K^T`` with ``u ~ U(-1, 1)`` has mean 0, standard deviation
    ``alpha sqrt(1/3) sum_d g(d)^2 / Z^2`` and correlation ``(g*g)(4) / (g*g)(0)`` at 4 pixels;
    the two axes and the images are independent."""
    alpha, sigma = 8.0, 3.0
    field = np.asarray(jax.jit(T.elastic_field, static_argnums=1)(jax.random.key(11), 1024, alpha, sigma), np.float64)
    g = np.exp(-np.arange(-9, 10) ** 2 / (2 * sigma**2))
    inner = field[:, :, 9:19, 9:19]
    assert abs(inner.mean()) < 0.02
    assert inner.std() == pytest.approx(alpha / np.sqrt(3) * (g**2).sum() / g.sum() ** 2, rel=0.03)  # 0.436 px
    autocorrelation = np.convolve(g, g)
    lagged = np.corrcoef(field[:, :, 9:19, 7:17].ravel(), field[:, :, 9:19, 11:21].ravel())[0, 1]
    assert lagged == pytest.approx(autocorrelation[18 + 4] / autocorrelation[18], abs=0.03)  # 0.641
    flat = field.reshape(1024, 2, -1)
    across_axes = [np.corrcoef(f[0], f[1])[0, 1] for f in flat]
    across_images = [np.corrcoef(a[0], b[0])[0, 1] for a, b in zip(flat[:-1], flat[1:])]
    assert abs(np.mean(across_axes)) < 0.03 and abs(np.mean(across_images)) < 0.03


def test_elastic_field_under_vmap_draws_each_keys_own_field():
    keys = jax.random.split(jax.random.key(12), 4)
    together = jax.jit(jax.vmap(lambda k: T.elastic_field(k, 2, 8.0, 3.0)))(keys)
    for key, field in zip(keys, together):
        np.testing.assert_allclose(field, jax.jit(T.elastic_field, static_argnums=1)(key, 2, 8.0, 3.0), atol=1e-6)
    assert not np.allclose(together[0], together[1])


def test_augment_is_affine_then_elastic_in_one_resampling():
    images = np.tile(digit()[None], (BATCH, 1))
    affine_key, elastic_key = jax.random.split(KEY)
    only_affine = J.augment(KEY, images, *MILD_AFFINE, 0.0, 4.0)
    np.testing.assert_allclose(only_affine, J.random_affine(affine_key, images, *MILD_AFFINE), atol=1e-5)
    only_elastic = J.augment(KEY, images, 0.0, 0.0, 0.0, 0.0, 8.0, 3.0)
    np.testing.assert_allclose(only_elastic, J.elastic(elastic_key, images, 8.0, 3.0), atol=1e-5)


def test_transforms_work_under_jit_and_vmap():
    images = noise_images(BATCH)
    angles = jnp.array([-30.0, 0.0, 45.0])
    curve = jax.jit(jax.vmap(T.rotate, in_axes=(None, 0)))(images, angles)
    for angle, rotated in zip(angles, curve):
        np.testing.assert_allclose(rotated, J.rotate(images, angle), atol=1e-5)

    matrices = jax.jit(jax.vmap(T.affine_matrix))(jnp.arange(3.0) * 10, 1 + jnp.arange(3.0) / 10)
    per_image = jax.jit(jax.vmap(T.warp))(images[:3], matrices)
    for image, matrix, out in zip(images, matrices, per_image):
        np.testing.assert_allclose(out, J.warp(image[None], matrix)[0], atol=1e-5)

    steps = jax.jit(jax.vmap(T.thickness, in_axes=(None, 0)))(images, jnp.array([-1, 0, 2]))
    np.testing.assert_array_equal(steps[1], images)
    np.testing.assert_array_equal(steps[2], J.thickness(images, 2))


def test_thickness_dilates_a_pixel_to_a_block_and_erodes_it_back():
    pixel = np.zeros((SIDE, SIDE), np.float32)
    pixel[10, 12] = 1.0
    block = np.zeros((SIDE, SIDE), np.float32)
    block[9:12, 11:14] = 1.0
    dilated = np.asarray(J.thickness(pixel.reshape(1, -1), 1)).reshape(SIDE, SIDE)
    np.testing.assert_array_equal(dilated, block)
    eroded = np.asarray(J.thickness(block.reshape(1, -1), -1)).reshape(SIDE, SIDE)
    np.testing.assert_array_equal(eroded, pixel)
    assert np.asarray(J.thickness(pixel.reshape(1, -1), 2)).sum() == 25


def test_thickness_erodes_from_the_frame_edge():
    eroded = np.asarray(J.thickness(np.ones((1, SIDE * SIDE), np.float32), -1)).reshape(SIDE, SIDE)
    assert eroded.sum() == (SIDE - 2) ** 2 and eroded[0].sum() == 0


@pytest.mark.parametrize("size", [1, 5, 16, 28])
def test_occlusion_zeroes_exactly_size_squared_pixels(size):
    ones = np.ones((3, SIDE * SIDE), np.float32)
    zeros = (np.asarray(J.occlude(ones, size)) == 0).sum(axis=1)
    np.testing.assert_array_equal(zeros, size * size)
    zeros = (np.asarray(J.random_occlude(jax.random.key(5), ones, size)) == 0).sum(axis=1)
    np.testing.assert_array_equal(zeros, size * size)


def test_occlusion_places_the_patch():
    ones = np.ones((1, SIDE * SIDE), np.float32)
    patch = np.asarray(J.occlude(ones, 3, row=2, col=20))[0].reshape(SIDE, SIDE)
    assert np.all(patch[2:5, 20:23] == 0) and patch.sum() == SIDE * SIDE - 9
    centred = np.asarray(J.occlude(ones, 4))[0].reshape(SIDE, SIDE)
    assert np.all(centred[12:16, 12:16] == 0)


def test_gaussian_noise_has_the_right_std_before_clipping():
    grey = np.full((50, SIDE * SIDE), 0.5, np.float32)
    noisy = np.asarray(J.gaussian_noise(jax.random.key(6), grey, 0.05))
    assert noisy.std() == pytest.approx(0.05, rel=0.02)
    assert noisy.mean() == pytest.approx(0.5, abs=1e-3)
    heavy = np.asarray(J.gaussian_noise(jax.random.key(6), grey, 1.0))
    assert heavy.min() == 0.0 and heavy.max() == 1.0


def test_robustness_table_gives_whole_curves_from_one_compile():
    assert set(T.ROBUSTNESS) == {"noise", "rotation", "shift", "scale", "thickness", "occlusion"}
    images = noise_images(BATCH)
    for name, (apply, identity, strengths) in T.ROBUSTNESS.items():
        assert identity in strengths, name
        curve_of = jax.jit(jax.vmap(apply, in_axes=(None, None, 0)))
        curve = curve_of(KEY, images, jnp.asarray(strengths, jnp.float32))
        assert curve.shape == (len(strengths),) + images.shape, name
        np.testing.assert_array_equal(curve[strengths.index(identity)], images, err_msg=name)  # bit for bit
        assert not np.array_equal(curve[-1], images), name


def test_mild_random_affine_on_real_digits_keeps_range_and_ink(mnist):
    images = mnist.test_images[:100]
    out = np.asarray(J.random_affine(jax.random.key(7), images, *MILD_AFFINE))
    assert out.min() >= 0.0 and out.max() <= 1.0
    np.testing.assert_allclose(out.sum(axis=1), images.sum(axis=1), rtol=0.2)
    assert np.abs(out - images).mean() > 0.01
