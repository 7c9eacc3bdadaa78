"""A live page: draw a digit in the browser and watch the network think.

``jaxdigits serve RUN_OR_CHECKPOINT`` starts a local web server (the standard library's
``ThreadingHTTPServer``) that serves the page in ``jaxdigits/static/`` and a small JSON API:

    GET  /api/network              sizes, activation, output, every layer's weights and biases,
                                   and whether test digits are available
    POST /api/predict              {"pixels": [grey 0..255, row by row], "width": W, "height": H}
                                   -> the 28x28 input after the same framing ``predict`` applies
                                   to a PNG, every layer's activations, the digit and its output
    GET  /api/example?kind=random|mistake
                                   a test digit (a mistake: one the network gets wrong), with its
                                   label and the same fields as /api/predict

Every answer comes from one jit-compiled forward pass that returns all layer activations. The
server answers only these paths and its own static files, and only to requests whose ``Host``
names it (``host_names``; another name gets 421, against DNS rebinding); bodies over ``MAX_BODY``
bytes get 413, bad JSON or shapes 400, a request that has not arrived ``REQUEST_SECONDS`` after
its first byte 408 (``RequestReader``), and no request can stop it or print a traceback.
"""

from __future__ import annotations

import errno
import io
import ipaddress
import json
import os
import posixpath
import re
import socket
import stat
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import numpy as np

from jaxdigits.core.dataset import MNIST_SIDE
from jaxdigits.core.errors import ConfigError, DataError, JaxdigitsError
from jaxdigits.interrupts import check

STATIC_DIR = Path(__file__).with_name("static")
MAX_BODY = 1 << 20  # a 280x280 canvas as JSON grey values is about 80-320 KB
REQUEST_SECONDS = 10.0  # a request, head and body, must arrive within this of its first byte
MAX_SIDE = 1024
MIN_SIDE = 8
MAX_PIXELS = 512 * 512
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".png": "image/png", ".svg": "image/svg+xml"}
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "[::1]"})
HOST_HEADER = re.compile(r"(\[[0-9a-f:.]+\]|[0-9a-z._-]+)(?::([0-9]{1,5}))?")  # name[:port], lower case
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
}


class BadRequest(Exception):
    """A request the server refuses with ``status`` and a one-line ``message``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def frame_grey(grey: np.ndarray) -> np.ndarray:
    """``grey (H, W)`` in [0, 1] as the ``(784,) float32`` input ``predict`` would see for a PNG of it."""
    from jaxdigits.images import frame_digit

    return np.asarray(frame_digit(grey), dtype=np.float32).reshape(-1)


def parse_pixels(body: bytes) -> np.ndarray:
    """The ``(H, W)`` grey image in [0, 1] from a /api/predict body, or ``BadRequest(400)``."""

    def refuse_constant(name):
        raise ValueError(f"{name} is not a number JSON allows")

    try:
        request = json.loads(body, parse_constant=refuse_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise BadRequest(400, f"the body is not JSON ({str(exc).splitlines()[0][:120]})") from None
    if not isinstance(request, dict):
        raise BadRequest(400, 'expected a JSON object {"pixels": [...], "width": W, "height": H}')
    width, height, pixels = request.get("width"), request.get("height"), request.get("pixels")
    for name, side in (("width", width), ("height", height)):
        if type(side) is not int or not MIN_SIDE <= side <= MAX_SIDE:
            raise BadRequest(400, f"{name} must be a whole number from {MIN_SIDE} to {MAX_SIDE}, got {side!r:.40}")
    if width * height > MAX_PIXELS:
        raise BadRequest(400, f"{width}x{height} is more than {MAX_PIXELS} pixels")
    if not isinstance(pixels, list) or len(pixels) != width * height:
        got = f"{len(pixels)} values" if isinstance(pixels, list) else type(pixels).__name__
        raise BadRequest(400, f"pixels must be a flat list of width*height = {width * height} grey values, got {got}")
    try:
        array = np.asarray(pixels)
    except (ValueError, OverflowError):
        array = np.asarray([], dtype=object)
    if array.shape != (width * height,) or array.dtype.kind not in "iuf":
        raise BadRequest(400, "pixels must all be numbers from 0 to 255 (grey values)")
    if not (np.all(array >= 0) and np.all(array <= 255)):
        raise BadRequest(400, "pixels must lie between 0 and 255")
    return (array.astype(np.float32) / 255.0).reshape(height, width)


class Model:
    """The network, its jit-compiled forward pass with every layer's activations, and (when a
    data folder is available) the test set with the network's predictions on it."""

    def __init__(self, network, info: dict[str, Any], data=None, data_note: str = ""):
        import jax

        from jaxdigits.core.model import layer_activations

        self.network, self.info = network, info
        self._forward = jax.jit(lambda net, images: layer_activations(net, images))
        self.data, self.data_note = data, data_note
        self.predictions = self.mistakes = None
        self._rng = np.random.default_rng()
        self._rng_lock = threading.Lock()
        self.activations(np.zeros(network.sizes[0], np.float32))  # compile before the first request
        if data is not None:
            from jaxdigits.core.model import predict

            self.predictions = np.asarray(predict(network, data.test_images.astype(network.dtype))[0])
            self.mistakes = np.flatnonzero(self.predictions != data.test_labels)

    def activations(self, image: np.ndarray) -> list[np.ndarray]:
        """Every layer's activations for one ``(inputs,)`` image, input first."""
        values = self._forward(self.network, np.asarray(image, self.network.dtype)[None, :])
        return [np.asarray(v[0], dtype=np.float64) for v in values]

    def answer(self, image: np.ndarray) -> dict[str, Any]:
        """The JSON answer for one framed image: input, activations per layer, digit, confidence."""
        values = self.activations(image)
        outputs = values[-1]
        digit = int(np.argmax(outputs))
        return {"input": _rounded(values[0]), "activations": [_rounded(v) for v in values[1:]],
                "digit": digit, "confidence": round(float(outputs[digit]), 6)}

    def example(self, kind: str) -> dict[str, Any]:
        if self.data is None:
            raise BadRequest(404, f"no test digits: {self.data_note}")
        pool = self.mistakes if kind == "mistake" else np.arange(len(self.data.test_labels))
        if len(pool) == 0:
            raise BadRequest(404, "the network reads every test digit correctly: no mistake to show")
        with self._rng_lock:
            index = int(pool[self._rng.integers(len(pool))])
        answer = self.answer(self.data.test_images[index])
        return {**answer, "kind": kind, "index": index, "label": int(self.data.test_labels[index])}

    def summary(self) -> dict[str, Any]:
        network, record = self.network, self.info.get("record") or {}
        return {
            "sizes": list(network.sizes), "activation": network.activation, "output": network.output,
            "layers": [{"w": _rounded(layer["w"]), "b": _rounded(layer["b"])} for layer in network.layers],
            "test_accuracy": record.get("test_accuracy"), "epochs": record.get("epochs_completed"),
            "examples": self.data is not None, "examples_note": self.data_note,
            "test_digits": 0 if self.data is None else int(len(self.data.test_labels)),
            "test_mistakes": 0 if self.mistakes is None else int(len(self.mistakes)),
        }


def _rounded(array, digits: int = 5) -> list:
    return np.round(np.asarray(array, dtype=np.float64), digits).tolist()


def load_model(checkpoint, data_dir=None) -> Model:
    """The network from a run folder or params file (see ``loader.load_run``), with the test set
    when a data folder is given (``data_dir``, else ``$JAXDIGITS_DATA_DIR``); nothing is downloaded."""
    from jaxdigits.loader import load_run

    run = load_run(checkpoint, data_dir=data_dir, data_required=False)
    if run.network.sizes[0] != MNIST_SIDE * MNIST_SIDE:
        raise ConfigError(f"the page draws {MNIST_SIDE}x{MNIST_SIDE} digits; this network takes {run.network.sizes[0]} inputs")
    return Model(run.network, run.info, run.data, run.note)


def host_names(host: str, address: str) -> frozenset[str]:
    """The names (lower case, IPv6 in brackets) a ``Host`` header may give for a server asked to
    listen on ``host`` and bound to ``address``: those two; ``localhost`` and the loopback addresses
    when it is a loopback address; on every interface (0.0.0.0, ::) also this machine's names.
    No name someone else's DNS controls is among them, so a rebound name is refused."""
    ip = ipaddress.ip_address(address.split("%")[0])
    names = {_bracketed(host.lower().rstrip(".")), _bracketed(str(ip))}
    if ip.is_loopback or ip.is_unspecified:
        names |= LOOPBACK_NAMES
    if ip.is_unspecified:
        names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
    return frozenset(names)


def _bracketed(name: str) -> str:
    return f"[{name}]" if ":" in name and not name.startswith("[") else name


def _is_ip_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name[1:-1] if name.startswith("[") else name)
    except ValueError:
        return False
    return True


def static_files(folder: Path | None = None) -> dict[str, tuple[bytes, str]]:
    """``{"/static/app.js": (bytes, content type), ...}``: the only files the server sends, read
    once: the regular files with a known suffix directly in ``folder`` (default ``STATIC_DIR``).
    A symlink there is never followed, wherever it leads; folders, pipes and devices are skipped."""
    folder = Path(STATIC_DIR if folder is None else folder).resolve()
    files = {}
    for name in sorted(os.listdir(folder)):
        suffix = Path(name).suffix
        if suffix in CONTENT_TYPES and (data := _read_regular(folder / name)) is not None:
            files[f"/static/{name}"] = (data, CONTENT_TYPES[suffix])
    if "/static/index.html" not in files:
        raise ConfigError(f"{folder}: no index.html (a regular file, not a link) to serve; reinstall jaxdigits")
    files["/"] = files["/static/index.html"]
    return files


def _read_regular(path: Path) -> bytes | None:
    """The bytes of ``path`` when it is itself a regular file, else ``None``: ``lstat`` (which
    sees a symlink as one), then opened with ``O_NOFOLLOW`` and without blocking, and the open
    descriptor must be that same regular file (nothing swapped in between)."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        seen = os.lstat(path)
        if not stat.S_ISREG(seen.st_mode):
            return None
        descriptor = os.open(path, flags)
    except OSError:
        return None  # a symlink swapped in (ELOOP), or gone
    with open(descriptor, "rb") as file:
        opened = os.fstat(descriptor)
        if not stat.S_ISREG(opened.st_mode) or (opened.st_dev, opened.st_ino) != (seen.st_dev, seen.st_ino):
            return None
        return file.read()


class RequestReader(io.RawIOBase):
    """A connection's reading side on which each request, head and body together, must arrive
    within ``REQUEST_SECONDS`` of its first byte, however slowly it trickles (a byte every second
    never lets one read wait long); between requests the connection may stay silent ``idle``
    seconds. A read past either raises ``TimeoutError``."""

    def __init__(self, connection: socket.socket, idle: float):
        super().__init__()
        self.connection, self.idle, self.deadline = connection, idle, None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        wait = self.idle if self.deadline is None else min(self.idle, self.deadline - time.monotonic())
        if wait <= 0:
            raise TimeoutError(f"the request took longer than {REQUEST_SECONDS:g} s to arrive")
        self.connection.settimeout(wait)
        count = self.connection.recv_into(buffer)
        if count and self.deadline is None:
            self.deadline = time.monotonic() + REQUEST_SECONDS
        return count

    def request_read(self) -> None:
        """The request has arrived: the answer is written with the idle timeout, and the next
        request's clock starts at its first byte."""
        self.deadline = None
        self.connection.settimeout(self.idle)


class Handler(BaseHTTPRequestHandler):
    server: "DigitServer"
    server_version = "jaxdigits"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    timeout = 20  # seconds a connection may stay silent before it is closed
    disable_nagle_algorithm = True  # headers and body leave at once, not 40 ms apart (delayed ACK)

    def log_message(self, format, *args):  # quiet: the page makes many requests a second
        pass

    def setup(self):
        super().setup()
        self.rfile.close()  # the standard reader, replaced by one with a deadline per request
        self.reader = RequestReader(self.connection, self.timeout)
        self.rfile = io.BufferedReader(self.reader)

    def do_GET(self):
        self._answer(self._get)

    def do_HEAD(self):
        self._answer(self._get, head=True)

    def do_POST(self):
        self._answer(self._post)

    def _answer(self, route, head: bool = False):
        try:
            self._check_host()
            if self.server.model is None:
                raise BadRequest(503, "the network is still loading")
            status, body, content_type = route(self._body())
        except BadRequest as exc:
            status, body, content_type = exc.status, _json({"error": str(exc)}), "application/json"
        except Exception as exc:  # noqa: BLE001 - the server must stay up and print no traceback
            message = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
            status, body, content_type = 500, _json({"error": message}), "application/json"
        self.reader.request_read()
        self._send(status, body, content_type, head)

    def _send(self, status: int, body: bytes, content_type: str, head: bool) -> None:
        """The answer, headers and body in one write; an error closes the connection."""
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in SECURITY_HEADERS.items():
            self.send_header(name, value)
        if status >= 400:
            self.close_connection = True
            self.send_header("Connection", "close")
        self._headers_buffer.append(b"\r\n")
        if not head:
            self._headers_buffer.append(body)
        self.flush_headers()  # one write for headers and body

    def _check_host(self) -> None:
        """Refuse a request whose ``Host`` is not this server (421; 400 when HTTP/1.1 gives none or several)."""
        hosts = self.headers.get_all("Host") or []
        if not hosts and self.request_version == "HTTP/1.0":
            return  # HTTP/1.0 has no Host header, and no browser sends a request without one
        if len(hosts) != 1:
            raise BadRequest(400, f"an HTTP/1.1 request needs one Host header, got {len(hosts)}")
        if not self.server.answers_to(hosts[0]):
            raise BadRequest(421, f"Host {hosts[0]!r:.60} is not this server's address; open {self.server.url}")

    def _path(self) -> tuple[str, dict]:
        """The normalised path and the query; 404 for a path that is not UTF-8 or leaves the files."""
        parts = urlsplit(self.path)
        try:
            path = unquote(parts.path, errors="strict")
        except UnicodeDecodeError:
            raise BadRequest(404, "not found") from None
        if "\x00" in path or "\\" in path or not path.startswith("/"):
            raise BadRequest(404, "not found")
        normal = posixpath.normpath(path)
        if normal != path.rstrip("/") and path != "/":
            raise BadRequest(404, "not found")  # '..', '.', '//' segments: no path escapes the files
        return normal, parse_qs(parts.query)

    def _body(self) -> bytes | None:
        """The request's body (``None`` without a Content-Length), read whole for every method and
        dropped by a GET or HEAD: a body is never taken for the next request on the connection."""
        if self.headers.get_all("Transfer-Encoding"):
            raise BadRequest(411, "send the body with a Content-Length, not chunked")
        lengths = self.headers.get_all("Content-Length") or []
        if not lengths:
            return None
        if len(lengths) > 1 or not re.fullmatch(r"[0-9]{1,16}", lengths[0].strip()):
            raise BadRequest(400, f"Content-Length must be one whole number of bytes, got {', '.join(lengths)!r:.60}")
        length = int(lengths[0])
        if length > MAX_BODY:
            raise BadRequest(413, f"the body is {length} bytes; at most {MAX_BODY} are accepted")
        return self._read_exactly(length)

    def _read_exactly(self, length: int) -> bytes:
        """``length`` bytes of body, or 400 when the client ends it early, 408 when it is late."""
        body = bytearray()
        try:
            while len(body) < length:
                chunk = self.rfile.read1(length - len(body))
                if not chunk:
                    raise BadRequest(400, f"the body ended after {len(body)} of the {length} bytes its Content-Length announced")
                body += chunk
        except TimeoutError:
            raise BadRequest(408, f"the body did not arrive within {REQUEST_SECONDS:g} s: {len(body)} of the {length} "
                                  "bytes its Content-Length announced; send it whole") from None
        return bytes(body)

    def _get(self, request_body: bytes | None):
        path, query = self._path()
        if path in self.server.files:
            body, content_type = self.server.files[path]
            return 200, body, content_type
        if path == "/api/network":
            return 200, self.server.network_json, "application/json"
        if path == "/api/example":
            kind = (query.get("kind") or ["random"])[0]
            if kind not in ("random", "mistake"):
                raise BadRequest(400, "kind must be random or mistake")
            return 200, _json(self.server.model.example(kind)), "application/json"
        raise BadRequest(404, "not found")

    def _post(self, request_body: bytes | None):
        path, _ = self._path()
        if path != "/api/predict":
            raise BadRequest(404 if path != "/api/network" else 405, "not found" if path != "/api/network" else "use GET")
        if request_body is None:
            raise BadRequest(411, "a Content-Length header is needed")
        grey = parse_pixels(request_body)
        try:
            image = frame_grey(grey)
        except DataError:
            return 200, _json({"blank": True}), "application/json"
        return 200, _json(self.server.model.answer(image)), "application/json"


def _json(value) -> bytes:
    from jaxdigits.files import to_json

    return to_json(value, compact=True).encode()


class DigitServer(ThreadingHTTPServer):
    """The HTTP server: one thread per connection, quiet about clients that go away."""

    daemon_threads = True
    request_queue_size = 64

    def __init__(self, address, model: Model | None = None, host: str | None = None):
        self.files = static_files(STATIC_DIR)
        self.model = self.network_json = None
        super().__init__(address, Handler)
        self.host_names = host_names(host or self.server_address[0], self.server_address[0])
        self.on_every_interface = ipaddress.ip_address(self.server_address[0].split("%")[0]).is_unspecified
        if model is not None:
            self.attach(model)

    def answers_to(self, header: str) -> bool:
        """Whether a ``Host`` header (``name[:port]``) names this server: one of ``host_names``
        (on every interface, also any IP address) and its port (80 when none is given)."""
        match = HOST_HEADER.fullmatch(header.strip().lower())
        if match is None or int(match[2] or 80) != self.server_address[1]:
            return False
        name = match[1].rstrip(".")
        return name in self.host_names or (self.on_every_interface and _is_ip_address(name))

    def attach(self, model: Model) -> None:
        """Answer with ``model`` (the server may bind first, so that a taken port fails fast)."""
        self.model, self.network_json = model, _json(model.summary())

    def handle_error(self, request, client_address):
        pass  # a client that disconnects mid-request is not the server's problem; no traceback

    def service_actions(self):
        check()  # Ctrl-C or SIGTERM stops serve_forever between polls (see ``interrupts``)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}/"


def make_server(model: Model | None, host: str = "127.0.0.1", port: int = 8000) -> DigitServer:
    """A bound server (port 0: any free port); ``serve_forever()`` runs it. A port already taken
    or a host that cannot be bound is a ``ConfigError`` (exit 2)."""
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port {port} is not a port number (0-65535)")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ConfigError(f"--host {host!r}: cannot resolve it ({exc})") from None
    family = infos[0][0]
    server_class = type("DigitServer6", (DigitServer,), {"address_family": socket.AF_INET6}) if family == socket.AF_INET6 else DigitServer
    try:
        return server_class(infos[0][4][:2], model, host)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(f"port {port} on {host} is already taken; pick another with --port") from None
        raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None


def serve(checkpoint, host: str = "127.0.0.1", port: int = 8000, data_dir=None, benchmark: int | None = None) -> int:
    """Load the network, start the server and print its address; runs until Ctrl-C or SIGTERM
    (``KeyboardInterrupt``; the command line exits 130).
    With ``benchmark=N``, time N predict requests instead and print the latency."""
    if benchmark:
        result = measure_latency(checkpoint, benchmark, data_dir=data_dir)
        print(f"{result['requests']} predict requests ({result['body_bytes']} bytes each): median "
              f"{result['median_ms']:.1f} ms, p95 {result['p95_ms']:.1f} ms, max {result['max_ms']:.1f} ms; "
              f"forward pass alone {result['forward_median_ms']:.2f} ms")
        return 0
    from jaxdigits.checkpoint import resolve_params_path

    resolve_params_path(checkpoint)  # a wrong path is reported before anything else
    server = make_server(None, host, port)
    try:
        model = load_model(checkpoint, data_dir)
    except BaseException:
        server.server_close()
        raise
    server.attach(model)
    note = "" if model.data is not None else f" ({model.data_note})"
    print(f"serving {'-'.join(map(str, model.network.sizes))} at {server.url}{note}; Ctrl-C stops it", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    return 0


def measure_latency(checkpoint, requests: int = 200, data_dir=None) -> dict[str, float]:
    """Time ``requests`` POST /api/predict round trips (a drawn test digit as a 280x280 canvas)
    against a server on a free local port, one after another; milliseconds."""
    import http.client

    from PIL import Image

    model = load_model(checkpoint, data_dir)
    server = make_server(model, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    if model.data is not None:
        digit = model.data.test_images[0].reshape(MNIST_SIDE, MNIST_SIDE)
    else:
        digit = np.zeros((MNIST_SIDE, MNIST_SIDE), np.float32)
        digit[6:22, 12:16] = 1.0
    canvas = np.asarray(Image.fromarray((digit * 255).astype(np.uint8)).resize((280, 280), Image.Resampling.BILINEAR))
    body = _json({"pixels": canvas.reshape(-1).astype(int).tolist(), "width": 280, "height": 280})
    connection = http.client.HTTPConnection(*server.server_address[:2], timeout=10)
    times, forward = [], []
    try:
        for i in range(requests + 5):
            start = time.perf_counter()
            connection.request("POST", "/api/predict", body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                raise JaxdigitsError(f"the benchmark request got HTTP {response.status}")
            if i >= 5:
                times.append(time.perf_counter() - start)
        image = model.data.test_images[0] if model.data is not None else digit.reshape(-1)
        for _ in range(requests):
            start = time.perf_counter()
            model.activations(image)
            forward.append(time.perf_counter() - start)
    finally:
        connection.close()
        server.shutdown()
        server.server_close()
    ms = np.asarray(times) * 1000
    return {"requests": requests, "body_bytes": len(body), "median_ms": float(np.median(ms)),
            "p95_ms": float(np.percentile(ms, 95)), "max_ms": float(ms.max()),
            "forward_median_ms": float(np.median(forward) * 1000)}
