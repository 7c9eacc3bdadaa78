"""Files: the one atomic writer, the one JSON convention, checked reads, and claiming ``--out``.

- ``write_atomic``: a temporary file in the same folder, fsync, rename; readers see the old file
  or the new one, never a mix. ``write_json`` writes strict JSON through it; ``append_lines``
  appends JSON lines durably. In every JSON file jaxdigits writes, a NaN or infinite number is
  ``null`` (strict JSON has neither).
- ``staged_output``: a report's files are written into a hidden folder inside ``--out`` and
  moved into place together once all are written; an error or Ctrl-C leaves ``--out`` as it was.
- ``read_regular_file``: a user-named file is read only if it is a regular file (a FIFO would
  hang, ``/dev/zero`` never ends), with one clear error otherwise.
- ``claim_folder``: an ``--out`` folder is claimed with a lock file holding the owner's pid, so
  two runs never write into one folder; a lock left by a killed run is recovered.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import math
import os
import platform
import shutil
import stat
import tempfile
import threading
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, BinaryIO, Iterable



from jaxdigits.core.errors import CheckpointError, JaxdigitsError, RunFolderError
from jaxdigits.interrupts import cleanup_on_stop, deferred

LOCK_FILE = ".jaxdigits.lock"


def json_safe(value: Any) -> Any:
    """``value`` as plain JSON data: numpy and JAX numbers and arrays as Python numbers and lists,
    paths as strings, NaN and infinities as ``None``."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return json_safe(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def to_json(value: Any, indent: int | None = None, compact: bool = False) -> str:
    """Strict JSON text of ``json_safe(value)`` (``compact``: no spaces, for the wire): the one
    JSON convention of every file and answer the project writes."""
    return json.dumps(json_safe(value), indent=indent, allow_nan=False, separators=(",", ":") if compact else None)


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a mix.

    A failed write (disk full, no permission) raises ``CheckpointError`` and leaves no temporary
    file behind; the previous file, if any, is intact.
    """
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temporary_prefix(path.name), suffix=".tmp")
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        _fsync_folder(path.parent)
    except OSError as exc:
        raise CheckpointError(
            f"{path}: cannot write ({exc.strerror or exc}); the previous version, if any, is intact"
        ) from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def write_json(path: str | os.PathLike, value: Any) -> Path:
    """Atomically write ``value`` as indented strict JSON (see ``json_safe``); returns the path."""
    path = Path(path)
    write_atomic(path, (to_json(value, indent=2) + "\n").encode())
    return path


def append_lines(path: str | os.PathLike, values: Iterable[Any]) -> None:
    """Append one JSON line per value and make them durable before returning.

    A failure (disk full, read-only file) raises ``CheckpointError``; what was appended before
    is kept, and a partly written line is cut off again so the file stays whole lines.
    """
    path = Path(path)
    data = "".join(to_json(v) + "\n" for v in values).encode()
    try:
        with open(path, "ab") as f:
            start = f.tell()
            try:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            except OSError:
                with contextlib.suppress(OSError):
                    f.truncate(start)
                raise
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot append results ({exc.strerror or exc}); earlier lines are kept") from None


def temporary_prefix(name: str) -> str:
    return f".{name}."


def remove_temporaries(folder: Path, names: Iterable[str]) -> None:
    """Delete temporary files that a process killed in the middle of a write left behind."""
    for name in names:
        for leftover in folder.glob(f"{temporary_prefix(name)}*.tmp"):
            leftover.unlink(missing_ok=True)


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_SPECIAL_FILES = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def check_regular_file(
    path: str | os.PathLike, what: str = "file", error: type[JaxdigitsError] = JaxdigitsError
) -> Path:
    """``path`` as a ``Path`` once it is known to be a regular file that can be opened for reading.

    Only ``stat`` is used, never ``open``: a named pipe, a device such as ``/dev/zero``, a folder,
    a symlink loop or a dangling symlink is refused before anything could block on it or read
    without end. ``what`` names the file in the message (``"IDX file"``, ``"checkpoint"``, ...);
    ``error`` is the ``JaxdigitsError`` subclass raised, with a one-line message naming the path.
    """
    path = Path(path)
    try:
        info = os.stat(path)
    except OSError as exc:
        raise error(_stat_problem(path, what, exc)) from None
    if not stat.S_ISREG(info.st_mode):
        kind = next((name for test, name in _SPECIAL_FILES if test(info.st_mode)), "a special file")
        raise error(f"{path}: not a regular file ({kind}); give the {what} itself")
    return path


def _stat_problem(path: Path, what: str, exc: OSError) -> str:
    """The one-line message for a failed ``stat`` of ``path``."""
    if exc.errno == errno.ELOOP:
        return f"{path}: symlink loop (a link that leads back to itself); give the {what} itself"
    if exc.errno == errno.ENOENT:
        with contextlib.suppress(OSError):
            if os.path.islink(path):
                return f"{path}: broken symlink to {os.readlink(path)}, which does not exist; give the {what} itself"
        return f"{path}: no such {what}"
    if exc.errno == errno.ENAMETOOLONG:
        return f"{path}: name too long for a {what}"
    return f"{path}: cannot read file ({exc.strerror or exc})"


def open_regular_file(
    path: str | os.PathLike, what: str = "file", error: type[JaxdigitsError] = JaxdigitsError
) -> BinaryIO:
    """``path`` opened for binary reading, refused (as ``check_regular_file``) unless a regular file.

    The file is opened without blocking and checked again on the open descriptor, so a file that
    is swapped for a named pipe between the check and the opening is refused too, not waited on.
    """
    path = check_regular_file(path, what, error)
    try:
        f = open(path, "rb", opener=_open_without_blocking)
    except OSError as exc:
        raise error(_stat_problem(path, what, exc)) from None
    try:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise error(f"{path}: not a regular file (it changed while being opened); give the {what} itself")
        os.set_blocking(f.fileno(), True)
    except BaseException:
        f.close()
        raise
    return f


def _open_without_blocking(path: str, flags: int) -> int:
    return os.open(path, flags | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))


def read_regular_file(path: str | os.PathLike, what: str, error: type[JaxdigitsError], limit: int = 64 << 20) -> bytes:
    """The bytes of ``path`` if it is a regular file (``open_regular_file``) of at most ``limit``
    bytes, else ``error`` with one line saying what it is instead."""
    with open_regular_file(path, what, error) as f:
        try:
            data = f.read(limit + 1)
        except OSError as exc:
            raise error(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    if len(data) > limit:
        raise error(f"{path}: larger than {limit >> 20} MiB; this is not a {what}")
    return data


# --- claiming an --out folder -----------------------------------------------------------------


def _process_start(pid: int) -> str | None:
    """When process ``pid`` started (``/proc/PID/stat`` field 22), or ``None`` where unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _pid_alive(pid: int, started: str | None = None) -> bool:
    """Whether the process that wrote a lock still runs: ``pid`` exists and, where its start time
    was recorded, started then (a pid reused after a reboot is not the lock's owner)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return started is None or _process_start(pid) in (None, started)


# Folders locked by this process, so that two threads of one process (whose pid is the same)
# cannot both claim a folder.
_HELD: set[str] = set()
_HELD_GUARD = threading.Lock()
# The largest pid Linux hands out (PID_MAX_LIMIT); a lock holding anything else is no owner's.
PID_LIMIT = 1 << 22
LOCK_BYTES = 256


class FolderLock:
    """``path/.jaxdigits.lock``, created exclusively with this process's pid and start time;
    released on exit. A lock whose process is gone (a run killed with ``kill -9``, or a pid reused
    since), or that holds no valid pid, is stale and taken over; a lock that is not a regular
    file is refused in one line. Within one process, a folder held by one thread is refused to
    the others (an in-process registry: they share the pid).
    """

    def __init__(self, folder: Path):
        self.path = folder / LOCK_FILE
        self.held = False
        self.key = os.path.realpath(folder)

    def acquire(self) -> None:
        with _HELD_GUARD:
            if self.key in _HELD:
                raise RunFolderError(f"{self.path.parent} is in use by another thread of this process; give each "
                                     "run its own --out")
            _HELD.add(self.key)
        try:
            self._acquire()
        except BaseException:
            with _HELD_GUARD:
                _HELD.discard(self.key)
            raise

    def _acquire(self) -> None:
        # The lock appears whole or not at all: its content goes to a temporary file that is then
        # hard-linked to the lock's name (which fails if the name exists), so no reader ever sees
        # an empty lock and takes it for a stale one.
        tmp = None
        try:
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=temporary_prefix(LOCK_FILE), suffix=".tmp")
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()} {_process_start(os.getpid()) or ''}".strip())
            for _ in range(3):
                try:
                    os.link(tmp, self.path)
                except FileExistsError:
                    owner, started = self._owner()
                    if owner is not None and owner != os.getpid() and _pid_alive(owner, started):
                        raise RunFolderError(
                            f"{self.path.parent} is in use by another jaxdigits process (pid {owner}); wait for it to "
                            f"finish or give another --out (if no such run is going on, delete {self.path})"
                        ) from None
                    self.path.unlink(missing_ok=True)  # stale: its process is gone
                    continue
                self.held = True
                return
        except OSError as exc:
            raise RunFolderError(f"{self.path.parent}: cannot use as --out ({exc.strerror or exc})") from None
        finally:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
        raise RunFolderError(f"{self.path.parent}: could not claim the folder; try again")

    def _owner(self) -> tuple[int | None, str | None]:
        """``(pid, start time)`` of the lock's writer, ``(None, None)`` when it holds no valid pid;
        read as every other file is: regular files only, a few bytes, never blocking."""
        try:
            fields = read_regular_file(self.path, "lock file", RunFolderError, limit=LOCK_BYTES).decode("ascii").split()
        except FileNotFoundError:
            return None, None
        except UnicodeDecodeError:
            return None, None
        except RunFolderError as exc:
            if not self.path.exists() and not self.path.is_symlink():
                return None, None  # removed meanwhile
            raise RunFolderError(f"{exc}; delete {self.path} if no jaxdigits run uses {self.path.parent}") from None
        if not fields or not fields[0].isdigit() or not 0 < int(fields[0]) < PID_LIMIT:
            return None, None
        return int(fields[0]), (fields[1] if len(fields) > 1 else None)

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False
        with _HELD_GUARD:
            _HELD.discard(self.key)

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()


# Files that mark a folder as a training run's or a sweep's.
RUN_MARKERS = ("params.safetensors", "checkpoint.safetensors", "run.json", "history.json")
SWEEP_MARKERS = ("sweep.json", "results.jsonl")
SEARCH_MARKERS = ("study.db", "trials/trial-*.safetensors")  # the study's default database, its best networks
KINDS = {"run": "a training run", "sweep": "a sweep", "search": "a search"}


def folder_kind(folder: Path) -> str | None:
    """``"run"``, ``"sweep"``, ``"search"`` or ``None``: what jaxdigits output ``folder`` already holds."""
    for kind, markers in (("sweep", SWEEP_MARKERS), ("run", RUN_MARKERS), ("search", SEARCH_MARKERS)):
        if any(next(folder.glob(pattern), None) is not None for pattern in markers):
            return kind
    return None


def refuse_other_kind(folder: Path, kind: str) -> str | None:
    """What ``folder`` holds (``folder_kind``), refused in one line when it is another kind than
    ``kind`` (a key of ``KINDS``): outputs of two kinds in one folder would mix."""
    found = folder_kind(folder)
    if found is not None and found != kind:
        raise RunFolderError(f"{folder} holds {KINDS[found]}, not {KINDS[kind]}; give a new --out")
    return found


def claim_folder(folder: str | os.PathLike, kind: str, own_files: Iterable[str], *, resume: bool, overwrite: bool) -> FolderLock:
    """Claim ``folder`` as the ``--out`` of a ``kind`` (``"run"`` or ``"sweep"``); return its held lock.

    Refuses a path that is a file or empty, and a folder holding another kind of output. A folder
    holding this kind is resumed with ``resume``, replaced with ``overwrite`` (only ``own_files``
    are removed; unrelated files are always left alone), and refused otherwise.
    """
    folder = output_folder(folder)
    lock = FolderLock(folder)
    lock.acquire()
    try:
        found = refuse_other_kind(folder, kind)
        if found == kind and overwrite:
            for name in own_files:
                (folder / name).unlink(missing_ok=True)
        elif found == kind and not resume:
            raise RunFolderError(f"{folder} already holds a run; pass --resume to continue it or --overwrite to replace it")
        remove_temporaries(folder, own_files)
    except BaseException:
        lock.release()
        raise
    return lock


def environment_info() -> dict[str, str]:
    """Versions of the libraries that produced a result, and the device it ran on."""
    return dict(_environment())


@functools.lru_cache(maxsize=None)
def _environment() -> dict[str, str]:
    import jax

    info = {}
    for package in ("jaxdigits", "jax", "jaxlib", "optax", "numpy"):
        try:
            info[package] = importlib_metadata.version(package)
        except importlib_metadata.PackageNotFoundError:
            info[package] = "unknown"
    device = jax.devices()[0]
    info.update(platform=device.platform, device_kind=device.device_kind, python=platform.python_version(),
                devices=str(jax.device_count()))
    return info


def output_folder(path: str | os.PathLike, flag: str = "--out") -> Path:
    """``path`` made ready to write into, before any work: refused in one line when it is a
    file, a dangling link or cannot be created (so a long computation never ends in a traceback)."""
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise RunFolderError(f"{path}: {flag} is a link to nothing; give a folder")
    if path.exists() and not path.is_dir():
        raise RunFolderError(f"{path}: {flag} must be a folder, and this is a file; give a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunFolderError(f"{path}: cannot use as {flag} ({exc.strerror or exc})") from None
    return path


# --- a report's files, all or none ------------------------------------------------------------

STAGE_PREFIX = ".jaxdigits-staging."


@contextlib.contextmanager
def staged_output(out_dir: str | os.PathLike, flag: str = "--out"):
    """A hidden folder inside ``out_dir`` (checked and created first, see ``output_folder``) to
    write a set of files into. When the block ends without error the files are moved into
    ``out_dir``, with Ctrl-C and SIGTERM held off, so the set appears whole; on an error or an
    interrupt the hidden folder is removed, and ``out_dir`` too when this made it and it is
    empty: ``out_dir`` holds the old set or the new one, never part of one. Yields the hidden
    folder. Hidden folders that killed processes left behind are removed on the next use."""
    existed = Path(out_dir).is_dir()
    folder = output_folder(out_dir, flag)
    _remove_dead_stages(folder)
    try:
        stage = Path(tempfile.mkdtemp(dir=folder, prefix=f"{STAGE_PREFIX}{os.getpid()}."))
    except OSError as exc:
        raise RunFolderError(f"{folder}: cannot use as {flag} ({exc.strerror or exc})") from None

    def discard() -> None:
        shutil.rmtree(stage, ignore_errors=True)
        if not existed:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if empty

    try:
        with cleanup_on_stop(discard):
            yield stage
    except BaseException:
        discard()
        raise
    with deferred():
        for path in sorted(stage.iterdir()):
            try:
                os.replace(path, folder / path.name)
            except OSError as exc:
                shutil.rmtree(stage, ignore_errors=True)
                raise CheckpointError(f"{folder / path.name}: cannot write ({exc.strerror or exc})") from None
        stage.rmdir()
    _fsync_folder(folder)


def _remove_dead_stages(folder: Path) -> None:
    """Remove staging folders of processes that no longer run (killed with ``kill -9``)."""
    for leftover in folder.glob(f"{STAGE_PREFIX}*"):
        pid = leftover.name[len(STAGE_PREFIX):].split(".")[0]
        if leftover.is_dir() and not (pid.isdigit() and 0 < int(pid) < PID_LIMIT and _pid_alive(int(pid))):
            shutil.rmtree(leftover, ignore_errors=True)
