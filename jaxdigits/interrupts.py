"""Ctrl-C and SIGTERM: a request to stop, honoured at safe points.

A signal handler that raises lands wherever the main thread happens to be: inside a callback of
JAX or of the garbage collector (where Python prints "Exception ignored" and the interrupt is
lost), or halfway through XLA's work (where the process can crash on its way out). So while
``handled()`` is active (the whole of a ``jaxdigits`` command) the handlers only note the
request, and the long loops call ``check()`` between units of work: an epoch in the training
loop, a group in a sweep, a population epoch in a search, a measurement or figure in a report,
a poll of the server. There ``check()`` raises ``Interrupted``, a ``KeyboardInterrupt`` that
unwinds through every ``finally`` (locks released, temporary files removed) as Ctrl-C always did.

A second signal stops the process at once with exit code 130, even while the main thread is
inside a long compiled computation (a watcher thread sees it through ``signal.set_wakeup_fd``);
writes held in ``deferred()`` finish first, so the files of one save still describe one moment.

The line that says how a command ended goes through ``say()``, so a second signal never adds
another; ``exit_on_signal()`` covers the moments after the work, while Python shuts down.

Outside ``handled()`` (jaxdigits used as a library) Python's own behaviour stays: Ctrl-C raises
``KeyboardInterrupt`` where it lands, ``deferred()`` holds it off during a save, and ``check()``
does nothing. A signal that the parent process set to be ignored (``nohup``, a background job)
stays ignored.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Callable, Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)
EXIT_CODE = 130
AGAIN = "interrupted again: stopped at once; what was saved before is kept"
_STOP_WATCHING = b"\0"  # no signal has number 0


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM, raised by ``check()`` at a safe point of a long loop."""


class _State:
    """What the handlers have noted; the main thread and the watcher thread share it."""

    def __init__(self):
        self.requested = threading.Event()
        self.guard = threading.RLock()  # re-entered by a handler that runs inside say()
        self.active = False  # handled() is in force
        self.deferring = 0  # depth of deferred() blocks (main thread only)
        self.stop_pending = False  # a second signal came during a deferred write
        self.cleanups: list[Callable[[], None]] = []
        self.late = False  # exit_on_signal() has taken over the handlers
        self.late_line: str | None = None
        self.reported = False  # say() has printed the line that ends the command
        self.saying = False  # say() is printing it


_state = _State()


def requested() -> bool:
    """Whether Ctrl-C or SIGTERM has asked this command to stop."""
    return _state.requested.is_set()


def check() -> None:
    """Raise ``Interrupted`` if a stop was asked for: call it between units of work. It does
    nothing outside the main thread (a server's or a heartbeat's thread is not stopped this way)."""
    if _state.requested.is_set() and threading.current_thread() is threading.main_thread():
        raise Interrupted


def wait(seconds: float) -> None:
    """Sleep up to ``seconds``, waking at once (and raising ``Interrupted``) on a stop request."""
    _state.requested.wait(seconds)
    check()


def _note(signum, frame) -> None:
    """The Python-level handler: note the request; ``check()`` acts on it."""
    _state.requested.set()


def say(line: str) -> None:
    """Print the one line that says how the command was interrupted (to stderr); a stop at once
    that comes after it prints nothing more, and one that comes first keeps it from printing."""
    with _state.guard:
        _state.saying = True
        print(line, file=sys.stderr, flush=True)
        _state.reported, _state.saying = True, False


def _stop_now() -> None:
    """The second signal: clean up what is registered, say so in one line (unless the command
    has said how it ended) and exit 130 at once (or, during a deferred write, right after it)."""
    with _state.guard:
        if _state.deferring:
            _state.stop_pending = True
            return
        for cleanup in list(_state.cleanups):
            with contextlib.suppress(Exception):
                cleanup()
        if not _state.reported:
            with contextlib.suppress(OSError):  # below a progress bar's line, where there is one
                os.write(2, (b"\n" if os.isatty(2) else b"") + AGAIN.encode() + b"\n")
        os._exit(EXIT_CODE)


def _watch(read_fd: int) -> None:
    """The watcher thread: each signal's number arrives as a byte on ``read_fd``; the first asks
    to stop, the second stops at once."""
    count = 0
    while True:
        try:
            data = os.read(read_fd, 64)
        except OSError:
            return
        if not data:  # the pipe was closed
            return
        for byte in data:
            if byte == _STOP_WATCHING[0]:
                return
            if byte in SIGNALS:
                count += 1
                _state.requested.set()
                if count >= 2:
                    _stop_now()


@contextlib.contextmanager
def handled() -> Iterator[None]:
    """Within the block, Ctrl-C and SIGTERM only ask to stop (see the module docstring); outside
    the main thread, or nested, it changes nothing."""
    if threading.current_thread() is not threading.main_thread() or _state.active:
        yield
        return
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    previous = {s: signal.signal(s, _note) for s in SIGNALS if signal.getsignal(s) is not signal.SIG_IGN}
    old_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    watcher = threading.Thread(target=_watch, args=(read_fd,), name="jaxdigits-interrupts", daemon=True)
    _state.requested.clear()
    _state.active, _state.stop_pending, _state.late, _state.reported = True, False, False, False
    watcher.start()
    try:
        yield
    finally:
        for s, handler in previous.items() if not _state.late else ():
            signal.signal(s, handler)
        signal.set_wakeup_fd(old_fd)
        with contextlib.suppress(OSError):
            os.write(write_fd, _STOP_WATCHING)
        watcher.join(timeout=5)
        _state.active = False
        _state.requested.clear()
        os.close(read_fd)
        os.close(write_fd)


def exit_on_signal(line: str) -> None:
    """From now until the process ends, Ctrl-C or SIGTERM exits 130 at once, after printing
    ``line`` unless ``say()`` has printed one: for the moments after a command has finished,
    while the interpreter shuts down, so that a late signal neither kills the process with
    another exit code nor is lost. ``handled()`` leaves these handlers in place."""
    _state.late_line = line
    if threading.current_thread() is threading.main_thread() and not _state.late:
        for s in SIGNALS:
            if signal.getsignal(s) is not signal.SIG_IGN:
                signal.signal(s, _stop_late)
        _state.late = True


def _stop_late(signum, frame) -> None:
    with _state.guard:
        if _state.saying:
            return  # it came while say() prints the line: the command ends with 130 anyway
        if _state.late_line and not _state.reported:
            with contextlib.suppress(OSError):
                os.write(2, f"{_state.late_line}\n".encode())
        os._exit(EXIT_CODE)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM off while a group of files is written, so that the files of one
    save all describe the same moment. Within ``handled()`` a stop is only ever noted, so this
    just makes a second signal wait for the write; as a library, a signal that arrives meanwhile
    takes effect (``KeyboardInterrupt``) right after the block. Outside the main thread (where
    Python cannot catch signals), or nested, it does nothing."""
    if threading.current_thread() is not threading.main_thread() or _state.deferring:
        yield
        return
    if _state.active:
        with _deferring():
            yield
        return
    received: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: received.append(signum)) for s in SIGNALS}
    try:
        with _deferring():
            yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    for signum in dict.fromkeys(received):
        _deliver(signum, previous[signum])


@contextlib.contextmanager
def _deferring() -> Iterator[None]:
    with _state.guard:
        _state.deferring += 1
    try:
        yield
    finally:
        with _state.guard:
            _state.deferring -= 1
            pending = _state.stop_pending and not _state.deferring
        if pending:
            _stop_now()


def _deliver(signum: int, handler) -> None:
    """Act on a signal held during ``deferred()`` as ``handler`` would have."""
    if callable(handler):
        handler(signum, None)
    elif handler == signal.SIG_DFL:
        signal.raise_signal(signum)
    elif handler != signal.SIG_IGN:
        raise KeyboardInterrupt


@contextlib.contextmanager
def cleanup_on_stop(cleanup: Callable[[], None]) -> Iterator[None]:
    """Within the block, a stop at once (the second signal) calls ``cleanup`` first, e.g. to
    remove a temporary folder that ``finally`` would have removed."""
    _state.cleanups.append(cleanup)
    try:
        yield
    finally:
        _state.cleanups.remove(cleanup)
