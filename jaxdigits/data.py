"""Data loading: MNIST-style IDX files from a folder or through tensorflow-datasets, and PNGs.

Every loader returns numpy arrays in one form: images ``(N, 784) float32`` in [0, 1] and labels
``(N,) int32`` in 0..9. Problems with the data raise ``DataError`` with a one-line message that
names the file.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import warnings
import zlib
from pathlib import Path

import numpy as np

from jaxdigits.errors import DataError
from jaxdigits.files import check_regular_file, open_regular_file

DATA_DIR_ENV = "JAXDIGITS_DATA_DIR"
DATASETS = ("mnist", "fashion_mnist")
IMAGE_SIDE = 28
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


class DataWarning(UserWarning):
    """Data that loads but is not what its name says, or looks wrong."""


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Train and test splits: images ``(N, inputs) float`` (MNIST: ``(N, 784) float32`` in [0, 1])
    and labels ``(N,) int32`` in ``0..num_classes-1``; ``name`` is recorded with every run.

    Any arrays of this form make a dataset: images of shape ``(N, H, W)`` are flattened, and
    ``num_classes`` defaults to the largest label + 1. Shapes, dtypes and labels are checked
    here, with one clear ``DataError`` for a problem. Iterating gives the four arrays.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    name: str = "custom"
    num_classes: int | None = None

    def __post_init__(self):
        arrays = {}
        for split in ("train", "test"):
            images = np.asarray(getattr(self, f"{split}_images"))
            labels = np.asarray(getattr(self, f"{split}_labels"))
            if images.ndim > 2:
                images = images.reshape(len(images), -1)
            if images.ndim != 2:
                raise DataError(f"{split}_images: shape {images.shape}, expected (N, inputs)")
            if not np.issubdtype(images.dtype, np.floating):
                raise DataError(f"{split}_images: dtype {images.dtype}, expected floats (e.g. uint8 pixels / 255)")
            if labels.ndim != 1 or len(labels) != len(images):
                raise DataError(f"{split}_labels: shape {labels.shape}, expected ({len(images)},): one class per image")
            if not np.issubdtype(labels.dtype, np.integer):
                raise DataError(f"{split}_labels: dtype {labels.dtype}, expected integer classes")
            arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels.astype(np.int32, copy=False)
        if len(arrays["train_images"]) == 0:
            raise DataError("the training split holds no images")
        if arrays["train_images"].shape[1] != arrays["test_images"].shape[1]:
            raise DataError(
                f"train images have {arrays['train_images'].shape[1]} inputs, test images "
                f"{arrays['test_images'].shape[1]}; both splits need the same input size"
            )
        for split in ("train", "test"):
            if not np.isfinite(arrays[f"{split}_images"]).all():
                raise DataError(f"{split}_images: hold NaN or infinite values; every pixel must be a finite number")
        beyond = arrays["test_labels"][arrays["test_labels"] > arrays["train_labels"].max()]
        if self.num_classes is None and len(beyond):
            warnings.warn(f"test_labels: classes up to {int(beyond.max())} lie beyond every training class "
                          f"(up to {int(arrays['train_labels'].max())}); pass num_classes= to say how many there are",
                          DataWarning, stacklevel=3)
        labels = np.concatenate([arrays["train_labels"], arrays["test_labels"]])
        classes = self.num_classes if self.num_classes is not None else int(labels.max()) + 1
        if int(labels.min()) < 0 or int(labels.max()) >= classes or classes < 2:
            raise DataError(f"labels must lie in 0..{classes - 1} with at least 2 classes; found {labels.min()}..{labels.max()}")
        for key, value in arrays.items():
            object.__setattr__(self, key, value)
        object.__setattr__(self, "num_classes", int(classes))

    def __iter__(self):
        return iter((self.train_images, self.train_labels, self.test_images, self.test_labels))

    @property
    def inputs(self) -> int:
        """The input size (784 for MNIST)."""
        return int(self.train_images.shape[1])

    def subset(self, num_train: int | None = None, num_test: int | None = None) -> "Dataset":
        """The first ``num_train`` training and ``num_test`` test examples (``None`` keeps all)."""
        return dataclasses.replace(
            self, train_images=self.train_images[:num_train], train_labels=self.train_labels[:num_train],
            test_images=self.test_images[:num_test], test_labels=self.test_labels[:num_test],
        )

    def describe(self) -> dict:
        """Name, sizes and SHA-256 of the arrays: recorded with a run, checked on resume."""
        from jaxdigits.files import sha256_arrays

        return {
            "name": self.name, "inputs": self.inputs, "classes": self.num_classes,
            "train_examples": int(len(self.train_images)), "test_examples": int(len(self.test_images)),
            "sha256": sha256_arrays(self),
        }


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
    return raw.reshape(len(raw), IMAGE_SIDE * IMAGE_SIDE).astype(np.float32) / 255.0


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


def _one_line(exc: BaseException) -> str:
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
            f"no data folder given and tensorflow-datasets cannot be imported ({_one_line(exc)}); "
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
    if name == "mnist":
        return Path(folder).expanduser()
    sibling = Path(folder).expanduser().resolve().parent / name
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
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    folder = data_dir or default_data_dir(name)
    if folder is not None:
        return load_idx_folder(folder, name)
    return load_idx_files(fetch_with_tfds(name), name)


_INK = 0.1  # a pixel this far from the background (after normalising it to 0) is ink
_DIGIT_BOX = 20  # MNIST digits were scaled to fit a 20x20 box, then centred in 28x28
_MIN_INK_PIXELS = 10  # fewer inked pixels in that box is specks, not a digit (MNIST has 34+)
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def load_digit_image(path: str | os.PathLike) -> np.ndarray:
    """A PNG (any size, dark or light background) as one MNIST-style ``(784,) float32`` image.

    The image is read as grey in [0, 1] (``_read_grey_image``) and framed as the MNIST digits were
    (``frame_digit``). Anything that cannot be a digit (not a regular file, not an image, too
    large, blank, only specks) raises ``DataError`` with a one-line message naming ``path``.
    """
    grey = _read_grey_image(path)
    try:
        return frame_digit(grey)
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from None


def _read_grey_image(path: str | os.PathLike) -> np.ndarray:
    """The image at ``path`` as ``(H, W) float32`` grey in [0, 1], whatever its PNG mode.

    16-bit grey is scaled by 65535 (not clipped to 8 bits); transparency is composited over a
    backdrop that contrasts with the ink, so black ink on a transparent background (colour
    uniform, alpha varying: the alpha is the ink) reads as that ink. Images over Pillow's
    decompression-bomb limit and PNGs whose text or ICC chunks decompress to too much are refused
    before their pixels are decoded.
    """
    import warnings

    from PIL import Image, UnidentifiedImageError

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with open_regular_file(path, "PNG image", DataError) as f, Image.open(f) as image:
                if image.width == 0 or image.height == 0:
                    raise DataError(f"{path}: image has no pixels ({image.width}x{image.height})")
                image.load()
                return _grey_pixels(image)
        except DataError:
            raise
        except UnidentifiedImageError:
            raise DataError(f"{path}: cannot read image ({_unidentified(path)})") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise DataError(
                f"{path}: image too large to read safely ({_one_line(exc)}); crop or scale the digit down"
            ) from None
        except ValueError as exc:
            if "MAX_TEXT" in str(exc):
                raise DataError(
                    f"{path}: a text or ICC-profile chunk decompresses to too much data; "
                    "save the image again without metadata"
                ) from None
            raise DataError(f"{path}: cannot read image ({_one_line(exc)})") from None
        except MemoryError:
            raise DataError(f"{path}: image too large to read in memory; crop or scale the digit down") from None
        except (OSError, SyntaxError, EOFError, IndexError, TypeError, zlib.error) as exc:
            # Pillow reports broken files in all these ways (UnidentifiedImageError is an OSError)
            raise DataError(f"{path}: cannot read image ({_one_line(exc)})") from None


def _unidentified(path: str | os.PathLike) -> str:
    """Why Pillow did not recognise ``path``: a PNG of zero size, or no image at all."""
    try:
        with open_regular_file(path, "PNG image", DataError) as f:
            head = f.read(24)
    except DataError:
        head = b""
    if head[:8] == _PNG_SIGNATURE and head[12:16] == b"IHDR":
        width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
        if width == 0 or height == 0:
            return f"a PNG of {width}x{height} pixels, which has no pixels"
    return "not a PNG or any other image format Pillow knows"


def _grey_pixels(image) -> np.ndarray:
    """A decoded Pillow image as ``(H, W) float32`` grey in [0, 1] (see ``_read_grey_image``)."""
    if image.mode in _SIXTEEN_BIT_MODES:  # 16-bit greyscale PNGs open as I;16 (or I)
        return np.clip(np.asarray(image, dtype=np.float64) / 65535.0, 0.0, 1.0).astype(np.float32)
    if image.mode == "F":
        return np.clip(np.nan_to_num(np.asarray(image, dtype=np.float32)), 0.0, 1.0)
    if image.mode not in _ALPHA_MODES and "transparency" not in image.info:
        return np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    # With transparency: what is drawn depends on the backdrop, chosen from the colours.
    rgba = np.asarray(image.convert("RGBA"), dtype=np.float32) / 255.0
    luma = rgba[..., :3] @ np.array([0.299, 0.587, 0.114], np.float32)  # as Pillow's "L"
    alpha = rgba[..., 3]
    if float(alpha.max()) == 0.0:  # fully transparent: nothing is drawn
        return np.zeros_like(luma)
    if float(alpha.min()) == float(alpha.max()):  # evenly opaque: the alpha changes nothing
        return np.clip(luma, 0.0, 1.0)
    visible = luma[alpha >= 0.1]
    if visible.size and float(np.percentile(visible, 99) - np.percentile(visible, 1)) <= 0.1:
        # One colour, alpha varying: the alpha is the ink. Put it on the opposite backdrop, so
        # dark ink lands on white and light ink on black.
        backdrop = 1.0 if float(visible.mean()) < 0.5 else 0.0
    else:
        # Ink of several shades: the transparent parts stand for the background, in the colour
        # they hold (a palette image whose white is transparent stays black on white).
        hidden = 1.0 - alpha
        backdrop = float((luma * hidden).sum() / hidden.sum())
    return np.clip(luma * alpha + backdrop * (1.0 - alpha), 0.0, 1.0)


def frame_digit(grey: np.ndarray) -> np.ndarray:
    """Frame a drawn digit as the MNIST digits were: ``(H, W)`` grey in [0, 1] -> ``(784,) float32``.

    The background (the median of the border pixels) is made 0 and the ink 1 (so dark ink on a
    light background is inverted); the ink is cropped, scaled so its longer side is 20 pixels,
    its strongest pixel made 1, and placed in a 28x28 frame with its centre of mass at the centre
    (shifted no further than keeps all the ink in the frame). Pure: reusable for any source of
    pixels, such as a drawing canvas. Raises ``DataError`` (message without a file name) for an
    image that holds no digit: empty, blank, or specks too small for their spread.
    """
    from PIL import Image

    grey = np.asarray(grey, dtype=np.float32)
    if grey.ndim != 2:
        raise DataError(f"expected a 2-D grey image (H, W), got shape {grey.shape}")
    if grey.size == 0:
        raise DataError(f"image has no pixels ({grey.shape[1]}x{grey.shape[0]})")
    if not np.isfinite(grey).all():
        raise DataError("image holds non-finite values")
    grey = np.clip(grey, 0.0, 1.0)
    background = float(np.median(np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])))
    if background > 0.5:
        grey, background = 1.0 - grey, 1.0 - background
    grey = np.clip((grey - background) / max(1.0 - background, 1e-6), 0.0, 1.0)
    rows, cols = np.nonzero(grey > _INK)
    if len(rows) == 0:
        raise DataError("image is blank; draw a digit on a plain background")
    ink = grey[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    scale = _DIGIT_BOX / max(ink.shape)
    size = (max(1, round(ink.shape[1] * scale)), max(1, round(ink.shape[0] * scale)))
    small = np.asarray(Image.fromarray(np.ascontiguousarray(ink, dtype=np.float32)).resize(size, Image.Resampling.LANCZOS))
    small = np.clip(small, 0.0, 1.0)
    peak = float(small.max())
    if peak <= 0.0 or int((small > _INK * peak).sum()) < _MIN_INK_PIXELS:
        raise DataError(
            f"the marks are too small for their spread to be a digit ({len(rows)} inked pixels across "
            f"{ink.shape[1]}x{ink.shape[0]}); crop the image to the digit or draw it with a thicker pen"
        )
    small = small / peak
    ys, xs = np.indices(small.shape)
    total = float(small.sum())
    centre = IMAGE_SIDE / 2
    top = int(np.floor(centre - float((ys * small).sum()) / total + 0.5))
    left = int(np.floor(centre - float((xs * small).sum()) / total + 0.5))
    top = min(max(top, 0), IMAGE_SIDE - small.shape[0])
    left = min(max(left, 0), IMAGE_SIDE - small.shape[1])
    frame = np.zeros((IMAGE_SIDE, IMAGE_SIDE), np.float32)
    frame[top : top + small.shape[0], left : left + small.shape[1]] = small
    return frame.reshape(-1)
