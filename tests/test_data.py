"""Data loading: IDX round trips, the real MNIST, the TFDS download path (offline), PNG input."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
from pathlib import Path

import numpy as np
import pytest

import jaxdigits as jd
from jaxdigits import data as data_module
from jaxdigits.data import IDX_FILES, load_idx_folder, read_idx
from tests.conftest import idx_bytes, synthetic_dataset, write_idx, write_idx_folder


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip(tmp_path, suffix):
    images = np.random.default_rng(0).integers(0, 256, (7, 28, 28), dtype=np.uint8)
    labels = np.arange(7, dtype=np.uint8) % 10
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / f"i{suffix}", images), ndim=3), images)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / f"l{suffix}", labels), ndim=1), labels)


@pytest.mark.parametrize("compress", [True, False])
def test_idx_folder_loads_into_the_common_form(tmp_path, compress):
    original = synthetic_dataset(30, 12)
    loaded = load_idx_folder(write_idx_folder(tmp_path, original, compress=compress))
    assert loaded.train_images.shape == (30, 784) and loaded.train_images.dtype == np.float32
    assert loaded.test_labels.shape == (12,) and loaded.test_labels.dtype == np.int32
    assert 0.0 <= loaded.train_images.min() and loaded.train_images.max() <= 1.0
    np.testing.assert_allclose(loaded.train_images, np.round(original.train_images * 255) / 255, atol=1e-6)
    np.testing.assert_array_equal(loaded.test_labels, original.test_labels)


def test_load_mnist_reads_the_env_folder(tiny_data_dir, monkeypatch):
    monkeypatch.setenv("JAXDIGITS_DATA_DIR", str(tiny_data_dir))
    assert len(jd.load_mnist().train_labels) == 200
    with pytest.raises(jd.DataError, match="unknown dataset"):
        jd.load_mnist(name="cifar")


def test_env_folder_is_mnist_and_other_datasets_are_looked_for_beside_it(tmp_path, monkeypatch):
    mnist_folder = write_idx_folder(tmp_path / "mnist", synthetic_dataset(30, 10))
    monkeypatch.setenv("JAXDIGITS_DATA_DIR", str(mnist_folder))
    with pytest.raises(jd.DataError, match="no fashion_mnist folder beside it"):
        jd.load_mnist(name="fashion_mnist")
    write_idx_folder(tmp_path / "fashion_mnist", synthetic_dataset(20, 10, seed=1))
    assert len(jd.load_mnist(name="fashion_mnist").train_labels) == 20
    assert len(jd.load_mnist().train_labels) == 30


def test_real_mnist_matches_the_published_files(mnist_dir, mnist):
    assert mnist.train_images.shape == (60000, 784) and mnist.test_images.shape == (10000, 784)
    assert np.bincount(mnist.train_labels).tolist()[:2] == [5923, 6742]
    assert mnist.train_labels[:5].tolist() == [5, 0, 4, 1, 9]
    raw = data_module.find_idx_file(mnist_dir, IDX_FILES["train_labels"])
    body = idx_bytes(read_idx(raw, ndim=1))
    assert hashlib.sha256(body).hexdigest().startswith("65a50cbb")


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def idx_server(tmp_path):
    """A loopback HTTP server serving a folder of gzip IDX files, as the MNIST mirror would."""
    served = write_idx_folder(tmp_path / "mirror", synthetic_dataset(40, 10))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", served
    server.shutdown()
    server.server_close()


def _sources(base_url: str, folder: Path, corrupt: bool = False):
    from tensorflow_datasets.core.download import checksums

    urls = {key: f"{base_url}{stem}.gz" for key, stem in IDX_FILES.items()}
    infos = {}
    for key, url in urls.items():
        info = checksums.compute_url_info(folder / f"{IDX_FILES[key]}.gz")
        infos[url] = checksums.UrlInfo(size=info.size, checksum="0" * 64 if corrupt else info.checksum, filename=info.filename)
    return urls, infos


def test_tfds_registry_names_the_mirror_and_checksums_without_tensorflow():
    import sys

    urls, infos = data_module.tfds_sources("mnist")
    assert set(urls) == set(IDX_FILES)
    assert all(url in infos and len(infos[url].checksum) == 64 for url in urls.values())
    fashion_urls, fashion_infos = data_module.tfds_sources("fashion_mnist")
    assert all(url in fashion_infos for url in fashion_urls.values())
    assert "tensorflow" not in sys.modules


def test_tfds_download_path_downloads_verifies_and_caches(idx_server, tmp_path, monkeypatch):
    base_url, served = idx_server
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    monkeypatch.delenv("JAXDIGITS_DATA_DIR", raising=False)
    sources = _sources(base_url, served)
    monkeypatch.setattr(data_module, "tfds_sources", lambda name: sources)
    first = jd.load_mnist()
    assert first.train_images.shape == (40, 784)
    assert any((tmp_path / "tfds" / "downloads").iterdir())
    # The second load is served from TFDS's cache: the mirror can be gone.
    for path in served.iterdir():
        path.unlink()
    second = jd.load_mnist()
    np.testing.assert_array_equal(first.train_labels, second.train_labels)


def test_tfds_download_rejects_a_checksum_mismatch(idx_server, tmp_path, monkeypatch):
    base_url, served = idx_server
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    monkeypatch.setattr(data_module, "tfds_sources", lambda name: _sources(base_url, served, corrupt=True))
    with pytest.raises(jd.DataError, match="could not download mnist"):
        data_module.fetch_with_tfds("mnist")


def test_offline_download_names_data_dir(tmp_path, monkeypatch):
    import socket

    with socket.socket() as s:  # a loopback port with nothing listening: refused at once
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    base = f"http://127.0.0.1:{closed}/"
    urls = {key: f"{base}{stem}.gz" for key, stem in IDX_FILES.items()}
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    monkeypatch.setattr(data_module, "tfds_sources", lambda name: (urls, {}))
    with pytest.raises(jd.DataError, match=r"offline, pass --data-dir DIR"):
        data_module.fetch_with_tfds("mnist")


def _save_png(path: Path, pixels: np.ndarray) -> Path:
    from PIL import Image

    Image.fromarray(pixels.astype(np.uint8)).save(path)
    return path


def test_png_digits_are_framed_like_mnist(tmp_path, mnist):
    from PIL import Image

    digit = (mnist.test_images[0].reshape(28, 28) * 255).astype(np.uint8)
    big = np.asarray(Image.fromarray(digit).resize((140, 140), Image.Resampling.BILINEAR))
    dark = jd.load_digit_image(_save_png(tmp_path / "dark.png", big))
    light = jd.load_digit_image(_save_png(tmp_path / "light.png", 255 - big))
    assert dark.shape == (784,) and dark.dtype == np.float32
    np.testing.assert_allclose(dark, light, atol=0.02)
    # Re-framing keeps the digit close to the original MNIST rendering.
    assert np.corrcoef(dark, mnist.test_images[0])[0, 1] > 0.8
    with pytest.raises(jd.DataError, match="blank"):
        jd.load_digit_image(_save_png(tmp_path / "blank.png", np.full((30, 30), 255)))
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(jd.DataError, match="cannot read image"):
        jd.load_digit_image(tmp_path / "bad.png")
