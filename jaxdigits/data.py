"""Data loading: MNIST-style IDX files from a folder or through tensorflow-datasets, and PNGs.

Every loader returns numpy arrays in one form: images ``(N, 784) float32`` in [0, 1] and labels
``(N,) int32`` in 0..9. Problems with the data raise ``DataError`` with a one-line message that
names the file.
"""

from __future__ import annotations

import gzip
import os
import warnings
import zlib
from pathlib import Path

import numpy as np

from jaxdigits.core.dataset import DATASETS, MNIST_SIDE as IMAGE_SIDE, DataWarning, Dataset
from jaxdigits.core.errors import ConfigError, DataError
from jaxdigits.files import check_regular_file, open_regular_file

DATA_DIR_ENV = "JAXDIGITS_DATA_DIR"
NUM_CLASSES = 10
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_UBYTE_TYPE_CODE = 0x08
# Deflate cannot compress better than about 1032:1, so a gzip file of c bytes holds at most
# this many times c bytes: a header that claims more is lying and is refused before reading.
_MAX_GZIP_RATIO = 1100
_GZIP_MAGIC = b"\x1f\x8b"
_READ_CHUNK = 1 << 18


def read_idx(path: str | os.PathLike, ndim: int | None = None) -> np.ndarray:
    """Read one unsigned-byte IDX file (optionally gzip-compressed) into a uint8 array.

    Compression is recognised by the gzip magic bytes, not the file name (browsers often
    decompress MNIST downloads and keep the ``.gz``). Checks the magic number, the number of
    dimensions (when ``ndim`` is given) and that the file holds exactly as many bytes as its
    header declares. Memory follows what the file really holds: the body is read in chunks, so
    a header that declares more than the file contains costs nothing before it is refused.
    """
    path = Path(path)
    try:
        with open_regular_file(path, "IDX file", DataError) as raw:
            info = os.fstat(raw.fileno())
            compressed = raw.read(2) == _GZIP_MAGIC
            raw.seek(0)
            with gzip.GzipFile(fileobj=raw, mode="rb") if compressed else raw as f:
                dims = _read_idx_header(f, path, ndim)
                size = int(np.prod(dims, dtype=object))
                header_size = 4 + 4 * len(dims)
                capacity = info.st_size * _MAX_GZIP_RATIO if compressed else info.st_size - header_size
                if size > capacity:
                    raise DataError(
                        f"{path}: truncated: header declares {dims} = {size} bytes, "
                        f"more than the file can hold"
                    )
                body = _read_at_most(f, size + 1)
    except DataError:
        raise
    except EOFError:
        raise DataError(f"{path}: truncated: the gzip stream ends early; download the file again") from None
    except (zlib.error, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: corrupt gzip data ({exc}); download the file again") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read file ({exc.strerror or exc})") from None
    if len(body) < size:
        raise DataError(f"{path}: truncated: header declares {size} data bytes, file has {len(body)}")
    if len(body) > size:
        raise DataError(f"{path}: has bytes after the {size} its header declares; not an IDX file")
    try:
        return np.frombuffer(body, dtype=np.uint8).reshape(dims)
    except ValueError:  # more dimensions than numpy supports
        raise DataError(f"{path}: {len(dims)} dimensions {dims} are not supported") from None


def _read_idx_header(f, path: Path, ndim: int | None) -> tuple[int, ...]:
    """The dimensions from an IDX header, checking the magic number and ``ndim``."""
    magic = f.read(4)
    if len(magic) < 4:
        raise DataError(f"{path}: file is empty or truncated inside its header")
    if magic[0] != 0 or magic[1] != 0 or magic[2] != _UBYTE_TYPE_CODE or magic[3] == 0:
        raise DataError(
            f"{path}: wrong magic number 0x{magic.hex()}; expected an unsigned-byte IDX "
            "file (0x00000801 for labels, 0x00000803 for images)"
        )
    file_ndim = magic[3]
    if ndim is not None and file_ndim != ndim:
        raise DataError(f"{path}: wrong dimensions: has {file_ndim}, expected {ndim}")
    header = f.read(4 * file_ndim)
    if len(header) < 4 * file_ndim:
        raise DataError(f"{path}: truncated inside its header")
    return tuple(int(d) for d in np.frombuffer(header, dtype=">u4"))


def _read_at_most(f, limit: int) -> bytearray:
    """Up to ``limit`` bytes of ``f``, in chunks, so memory grows with the bytes actually there."""
    body = bytearray()
    while len(body) < limit:
        chunk = f.read(min(_READ_CHUNK, limit - len(body)))
        if not chunk:
            break
        body += chunk
    return body


def find_idx_file(folder: Path, stem: str) -> Path:
    """The path of ``stem`` or ``stem.gz`` in ``folder``: a regular file, preferring ``stem``.

    A name that is there but is no regular file (a named pipe, a device, a folder, a symlink
    loop) is reported as what it is, not as a missing file.
    """
    try:
        candidates = [folder / stem, folder / f"{stem}.gz"]
        for candidate in candidates:
            if candidate.is_file():
                return candidate
        present = [candidate for candidate in candidates if os.path.lexists(candidate)]
        os.listdir(folder)  # tells a folder that cannot be read from one that lacks the file
    except OSError as exc:
        raise DataError(f"{folder}: cannot read data folder ({exc.strerror or exc})") from None
    if present:  # there, but no regular file: a pipe, a device, a folder, a symlink loop, ...
        return check_regular_file(present[0], "IDX file", DataError)
    raise DataError(
        f"{folder}: no {stem}[.gz]; the folder must hold the four MNIST-format IDX files "
        f"({', '.join(IDX_FILES.values())})"
    )


def images_from_idx(raw: np.ndarray, path: Path) -> np.ndarray:
    """``(N, 28, 28) uint8`` -> ``(N, 784) float32`` in [0, 1]."""
    if raw.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
        raise DataError(f"{path}: wrong image dimensions {raw.shape[1:]}, expected (28, 28)")
    return raw.reshape(len(raw), IMAGE_SIDE * IMAGE_SIDE) / np.float32(255)  # one pass, float32(u) / 255


def labels_from_idx(raw: np.ndarray, path: Path) -> np.ndarray:
    """``(N,) uint8`` -> ``(N,) int32``, checking every label is a digit 0..9."""
    if raw.size and int(raw.max()) >= NUM_CLASSES:
        raise DataError(f"{path}: label {int(raw.max())} is out of range; labels must be 0..9")
    return raw.astype(np.int32)


def load_split(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One split's images ``(N, 784)`` and labels ``(N,)`` from its two IDX files."""
    images = images_from_idx(read_idx(images_path, ndim=3), images_path)
    labels = labels_from_idx(read_idx(labels_path, ndim=1), labels_path)
    if len(images) != len(labels):
        raise DataError(
            f"{labels_path}: {len(labels)} labels but {images_path.name} has {len(images)} images"
        )
    if len(images) == 0:
        raise DataError(f"{images_path}: holds no images")
    return images, labels


# SHA-256 of the training labels' bytes (the IDX body) of the known datasets: what the files
# really are, whatever name they were loaded under.
KNOWN_TRAIN_LABELS = {
    "1feba77c54802fa5339a11837ea4b2866434b83314ec45192930f1df69120c13": "mnist",
    "657fbd221bfc9f4198cc14b5619cc33ec57c58dd0e47af4d99d6650759e869a7": "fashion_mnist",
}


def recognise(labels: np.ndarray) -> str | None:
    """The known dataset whose training labels these are, or ``None``."""
    import hashlib

    return KNOWN_TRAIN_LABELS.get(hashlib.sha256(np.asarray(labels, np.uint8).tobytes()).hexdigest())


def load_idx_files(paths: dict[str, Path], name: str = "mnist") -> Dataset:
    """A ``Dataset`` from the four IDX files named by ``IDX_FILES``' keys.

    Files recognised as another known dataset than ``name`` (Fashion-MNIST given as MNIST) are
    named for what they are, with a ``DataWarning``."""
    train = load_split(paths["train_images"], paths["train_labels"])
    test = load_split(paths["test_images"], paths["test_labels"])
    actual = recognise(train[1])
    if actual is not None and actual != name:
        warnings.warn(f"{paths['train_labels'].parent}: these files are {actual}, not {name}; "
                      f"recording them as {actual}", DataWarning, stacklevel=3)
        name = actual
    return Dataset(*train, *test, name=name, num_classes=NUM_CLASSES)


def load_idx_folder(folder: str | os.PathLike, name: str = "mnist") -> Dataset:
    """A ``Dataset`` from a folder with the four standard IDX files (``.gz`` or not)."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        problem = "is not a folder" if folder.exists() else "data folder does not exist"
        raise DataError(f"{folder}: {problem}; pass --data-dir DIR, a folder with the four IDX files")
    return load_idx_files({key: find_idx_file(folder, stem) for key, stem in IDX_FILES.items()}, name)


def download_idx_files(urls: dict[str, str], url_infos: dict, download_dir: Path) -> dict[str, Path]:
    """Download (or reuse from TFDS's cache) and checksum-verify the IDX files at ``urls``, in turn.

    Uses ``tfds.download.DownloadManager``, which needs no TensorFlow: files land in
    ``download_dir`` under TFDS's own naming, so a later call (or TFDS itself) reuses them.
    Files that are not cached yet are only asked for once their host answers within
    ``PROBE_TIMEOUT_S`` seconds (``ConnectionError`` otherwise): offline, TFDS would retry each
    file for minutes before giving up.
    """
    import tensorflow_datasets as tfds

    missing = [url for url in urls.values() if not _tfds_cached(url, url_infos, download_dir)]
    if missing:
        _probe_hosts(missing)
    manager = tfds.download.DownloadManager(
        download_dir=download_dir, url_infos=url_infos, force_checksums_validation=True
    )
    # One file at a time: given all at once, TFDS raises at the first failure while the other
    # downloads carry on in its threads, writing into temporaries that are being cleaned up and,
    # once their host is gone, retrying for minutes while the interpreter waits for them to exit.
    return {key: Path(manager.download(url)) for key, url in urls.items()}


PROBE_TIMEOUT_S = 5.0  # how long the download host (or proxy) has to accept a connection


def _tfds_cached(url: str, url_infos: dict, download_dir: Path) -> bool:
    """Whether TFDS's cache in ``download_dir`` already holds ``url`` (its file and ``.INFO``)."""
    try:
        from tensorflow_datasets.core.download import resource

        info = url_infos.get(url)
        names = [resource.get_dl_fname(url, info.checksum)] if info is not None else []
        names.append(resource.get_dl_fname(url))
        return any(resource.is_locally_cached(download_dir / name) for name in names)
    except Exception:  # another TFDS layout: assume not cached, which only costs a probe
        return False


def _probe_hosts(urls: list[str], timeout: float | None = None) -> None:
    """Raise ``ConnectionError`` unless every host (or its proxy) of ``urls`` accepts a connection.

    Each host is tried in a daemon thread, all at once, and waited for at most ``timeout``
    seconds in all (name resolution included, which a socket timeout does not bound).
    """
    import socket
    import threading
    import time
    import urllib.parse
    import urllib.request

    timeout = PROBE_TIMEOUT_S if timeout is None else timeout
    proxies = urllib.request.getproxies()
    targets = {}
    for url in urls:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https", "ftp") or not parts.hostname:
            continue  # a local path or another scheme TFDS copies without a network
        target = (parts.hostname, parts.port or socket.getservbyname(parts.scheme, "tcp"))
        proxy = proxies.get(parts.scheme)
        if proxy and not urllib.request.proxy_bypass(parts.hostname):
            proxy_parts = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
            if proxy_parts.hostname:
                target = (proxy_parts.hostname, proxy_parts.port or 80)
        targets[target] = None

    def probe(target):
        try:
            socket.create_connection(target, timeout=timeout).close()
            targets[target] = ""
        except TimeoutError:
            targets[target] = None
        except OSError as exc:
            targets[target] = exc.strerror or str(exc) or type(exc).__name__

    threads = [threading.Thread(target=probe, args=(target,), daemon=True) for target in targets]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    for (host, port), problem in targets.items():
        if problem != "":
            raise ConnectionError(f"cannot reach {host}:{port}: {problem or f'no answer within {timeout:g} s'}")


def tfds_download_dir() -> Path:
    """TFDS's download cache: ``$TFDS_DATA_DIR/downloads`` (default ``~/tensorflow_datasets``)."""
    from tensorflow_datasets.core import constants

    return Path(os.environ.get("TFDS_DATA_DIR", constants.DATA_DIR)).expanduser() / "downloads"


def tfds_sources(name: str) -> tuple[dict[str, str], dict]:
    """The URLs TFDS itself downloads ``name``'s four IDX files from, and its registered checksums."""
    import tensorflow_datasets as tfds

    builder = tfds.builder_cls(name)
    urls = {key: builder.URL + f"{stem}.gz" for key, stem in IDX_FILES.items()}
    return urls, builder.url_infos


def one_line(exc: BaseException) -> str:
    """``exc``'s message on one line, at most 200 characters, without a final full stop."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200].rstrip(".")


_OFFLINE_HINT = f"pass --data-dir DIR (or set {DATA_DIR_ENV}) to a folder with the four IDX files"


def fetch_with_tfds(name: str) -> dict[str, Path]:
    """Paths of ``name``'s four IDX files, downloaded and verified through TFDS (or its cache).

    Fails within seconds when the download host cannot be reached (see ``download_idx_files``)
    and, on any failure, removes the temporary folders TFDS made in its download folder during
    this call (and the folders it created, if left empty), so nothing is left behind.
    tensorflow-datasets is imported only here: without it, a one-line ``DataError`` says to pass
    ``--data-dir`` or install it.
    """
    try:
        import tensorflow_datasets  # noqa: F401  (only to tell a missing install apart)
    except Exception as exc:  # ImportError, or a broken installation
        raise DataError(
            f"no data folder given and tensorflow-datasets cannot be imported ({one_line(exc)}); "
            f"{_OFFLINE_HINT}, or install tensorflow-datasets to download {name}"
        ) from None
    try:
        urls, url_infos = tfds_sources(name)
        download_dir = tfds_download_dir()
        before = _download_dir_state(download_dir)
        try:
            return download_idx_files(urls, url_infos, download_dir)
        except BaseException:
            _remove_leftovers(download_dir, before)
            raise
    except Exception as exc:  # network, checksum or TFDS failures all end the same way
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(
            f"could not download {name} through tensorflow-datasets ({reason[:200]}); if this "
            f"machine is offline, {_OFFLINE_HINT}"
        ) from None


_TFDS_TEMPORARIES = ("*.tmp.*", "*incomplete*")


def _download_dir_state(download_dir: Path) -> tuple[set[Path], list[Path]]:
    """What is there before a download: TFDS temporaries, and the folders that do not exist yet."""
    temporaries = {path for pattern in _TFDS_TEMPORARIES for path in download_dir.glob(pattern)}
    absent = [folder for folder in (download_dir / "extracted", download_dir, download_dir.parent) if not folder.exists()]
    return temporaries, absent


def _remove_leftovers(download_dir: Path, before: tuple[set[Path], list[Path]]) -> None:
    """Remove the TFDS temporaries made since ``before``, then the folders made, if left empty."""
    import shutil

    temporaries, absent = before
    for pattern in _TFDS_TEMPORARIES:
        for path in download_dir.glob(pattern):
            if path not in temporaries:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
    for folder in absent:  # deepest first
        try:
            folder.rmdir()
        except OSError:
            pass


def default_data_dir(name: str = "mnist") -> Path | None:
    """The folder ``$JAXDIGITS_DATA_DIR`` names for dataset ``name``, or ``None`` when unset.

    The variable names the MNIST folder; another dataset is looked for in a folder named after
    it beside that one (``$JAXDIGITS_DATA_DIR/../fashion_mnist``), never in the MNIST folder.
    """
    folder = os.environ.get(DATA_DIR_ENV)
    if not folder:
        return None
    path = Path(folder).expanduser()
    if name == "mnist":
        if not path.is_dir():
            problem = "is not a folder" if path.exists() else "does not exist"
            raise DataError(f"{DATA_DIR_ENV}={folder}: {problem}; set it to a folder with the four IDX files, "
                            "or pass --data-dir DIR")
        return path
    sibling = path.resolve().parent / name
    if not sibling.is_dir():
        raise DataError(
            f"{DATA_DIR_ENV} names the MNIST folder and there is no {name} folder beside it "
            f"({sibling}); pass --data-dir DIR with {name}'s four IDX files"
        )
    return sibling


def load_mnist(data_dir: str | os.PathLike | None = None, name: str = "mnist") -> Dataset:
    """MNIST (or ``name="fashion_mnist"``) as a ``Dataset`` of numpy arrays.

    Reads the IDX files in ``data_dir`` when given, else in the folder ``$JAXDIGITS_DATA_DIR``
    names for ``name`` (see ``default_data_dir``); otherwise downloads them once through
    tensorflow-datasets' download manager into TFDS's cache.
    """
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    folder = data_dir or default_data_dir(name)
    if folder is not None:
        return load_idx_folder(folder, name)
    return load_idx_files(fetch_with_tfds(name), name)
