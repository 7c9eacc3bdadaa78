"""Data loading: MNIST-style IDX files from a folder or through tensorflow-datasets, and PNGs.

Every loader returns numpy arrays in one form: images ``(N, 784) float32`` in [0, 1] and labels
``(N,) int32`` in 0..9. Problems with the data raise ``DataError`` with a one-line message that
names the file.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import stat
import warnings
import zlib
from pathlib import Path
import numpy as np

from jaxdigits.errors import DataError

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
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise DataError(f"{path}: not a regular file")
        with open(path, "rb") as raw:
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
    """The path of ``stem`` or ``stem.gz`` in ``folder``."""
    try:
        for candidate in (folder / stem, folder / f"{stem}.gz"):
            if candidate.is_file():
                return candidate
        os.listdir(folder)  # tells a folder that cannot be read from one that lacks the file
    except OSError as exc:
        raise DataError(f"{folder}: cannot read data folder ({exc.strerror or exc})") from None
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


class DataWarning(UserWarning):
    """Data that loads but is not what its name says."""


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
    """Download (or reuse from TFDS's cache) and checksum-verify the IDX files at ``urls``.

    Uses ``tfds.download.DownloadManager``, which needs no TensorFlow: files land in
    ``download_dir`` under TFDS's own naming, so a later call (or TFDS itself) reuses them.
    """
    import tensorflow_datasets as tfds

    manager = tfds.download.DownloadManager(
        download_dir=download_dir, url_infos=url_infos, force_checksums_validation=True
    )
    return {key: Path(path) for key, path in manager.download(urls).items()}


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


def fetch_with_tfds(name: str) -> dict[str, Path]:
    """Paths of ``name``'s four IDX files, downloaded and verified through TFDS (or its cache)."""
    try:
        urls, url_infos = tfds_sources(name)
        return download_idx_files(urls, url_infos, tfds_download_dir())
    except Exception as exc:  # network, checksum or TFDS failures all end the same way
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(
            f"could not download {name} through tensorflow-datasets ({reason[:200]}); if this "
            f"machine is offline, pass --data-dir DIR (or set {DATA_DIR_ENV}) to a folder with "
            "the four IDX files"
        ) from None


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


def load_digit_image(path: str | os.PathLike) -> np.ndarray:
    """A PNG (any size, dark or light background) as one MNIST-style ``(784,) float32`` image.

    The image is turned to grey, inverted if its background is light (MNIST digits are light on
    dark), cropped to the ink, scaled so its longer side is 20 pixels and placed in a 28x28 frame
    with its centre of mass at the centre, as the MNIST digits were prepared.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            grey = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"{path}: cannot read image ({exc})") from None
    background = float(np.median(np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])))
    if background > 0.5:
        grey, background = 1.0 - grey, 1.0 - background
    grey = np.clip((grey - background) / max(1.0 - background, 1e-6), 0.0, 1.0)
    rows, cols = np.nonzero(grey > 0.1)
    if len(rows) == 0:
        raise DataError(f"{path}: image is blank; draw a digit on a plain background")
    ink = grey[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    scale = 20.0 / max(ink.shape)
    size = (max(1, round(ink.shape[1] * scale)), max(1, round(ink.shape[0] * scale)))
    small = np.asarray(
        Image.fromarray((ink * 255).astype(np.uint8)).resize(size, Image.Resampling.LANCZOS),
        dtype=np.float32,
    ) / 255.0
    frame = np.zeros((IMAGE_SIDE, IMAGE_SIDE), np.float32)
    top, left = (IMAGE_SIDE - small.shape[0]) // 2, (IMAGE_SIDE - small.shape[1]) // 2
    frame[top : top + small.shape[0], left : left + small.shape[1]] = small
    total = frame.sum()
    ys, xs = np.indices(frame.shape)
    shift_y = int(round(IMAGE_SIDE / 2 - (ys * frame).sum() / total))
    shift_x = int(round(IMAGE_SIDE / 2 - (xs * frame).sum() / total))
    frame = np.roll(frame, (shift_y, shift_x), axis=(0, 1))
    return np.clip(frame, 0.0, 1.0).reshape(-1)
