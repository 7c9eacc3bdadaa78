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
server answers only these paths and its own static files; bodies over ``MAX_BODY`` bytes get 413,
bad JSON or shapes 400, and no request can stop it or print a traceback.
"""

from __future__ import annotations

import errno
import json
import posixpath
import socket
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
MAX_SIDE = 1024
MIN_SIDE = 8
MAX_PIXELS = 512 * 512
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".png": "image/png", ".svg": "image/svg+xml"}
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


def static_files(folder: Path = STATIC_DIR) -> dict[str, tuple[bytes, str]]:
    """``{"/static/app.js": (bytes, content type), ...}``: the only files the server sends."""
    files = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix in CONTENT_TYPES:
            files[f"/static/{path.name}"] = (path.read_bytes(), CONTENT_TYPES[path.suffix])
    files["/"] = files["/static/index.html"]
    return files


class Handler(BaseHTTPRequestHandler):
    server: "DigitServer"
    server_version = "jaxdigits"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    timeout = 20  # seconds a connection may stay silent before it is closed
    disable_nagle_algorithm = True  # headers and body leave at once, not 40 ms apart (delayed ACK)

    def log_message(self, format, *args):  # quiet: the page makes many requests a second
        pass

    def do_GET(self):
        self._answer(self._get)

    def do_HEAD(self):
        self._answer(self._get, head=True)

    def do_POST(self):
        self._answer(self._post)

    def _answer(self, route, head: bool = False):
        try:
            if self.server.model is None:
                raise BadRequest(503, "the network is still loading")
            status, body, content_type = route()
        except BadRequest as exc:
            status, body, content_type = exc.status, _json({"error": str(exc)}), "application/json"
        except Exception as exc:  # noqa: BLE001 - the server must stay up and print no traceback
            message = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
            status, body, content_type = 500, _json({"error": message}), "application/json"
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

    def _path(self) -> tuple[str, dict]:
        parts = urlsplit(self.path)
        path = unquote(parts.path, errors="strict")
        if "\x00" in path or "\\" in path or not path.startswith("/"):
            raise BadRequest(404, "not found")
        normal = posixpath.normpath(path)
        if normal != path.rstrip("/") and path != "/":
            raise BadRequest(404, "not found")  # '..', '.', '//' segments: no path escapes the files
        return normal, parse_qs(parts.query)

    def _get(self):
        try:
            path, query = self._path()
        except UnicodeDecodeError:
            raise BadRequest(404, "not found") from None
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

    def _post(self):
        path, _ = self._path()
        if path != "/api/predict":
            self._discard_body()
            raise BadRequest(404 if path != "/api/network" else 405, "not found" if path != "/api/network" else "use GET")
        if self.headers.get("Transfer-Encoding"):
            raise BadRequest(411, "send the body with a Content-Length, not chunked")
        length = self.headers.get("Content-Length")
        try:
            length = int(length)
        except (TypeError, ValueError):
            raise BadRequest(411, "a Content-Length header is needed") from None
        if length < 0:
            raise BadRequest(400, "a negative Content-Length")
        if length > MAX_BODY:
            raise BadRequest(413, f"the body is {length} bytes; at most {MAX_BODY} are accepted")
        body = self.rfile.read(length)
        if len(body) < length:
            raise BadRequest(400, "the body ended early")
        grey = parse_pixels(body)
        try:
            image = frame_grey(grey)
        except DataError:
            return 200, _json({"blank": True}), "application/json"
        return 200, _json(self.server.model.answer(image)), "application/json"

    def _discard_body(self):
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0
        if 0 < length <= MAX_BODY:
            self.rfile.read(length)


def _json(value) -> bytes:
    from jaxdigits.files import to_json

    return to_json(value, compact=True).encode()


class DigitServer(ThreadingHTTPServer):
    """The HTTP server: one thread per connection, quiet about clients that go away."""

    daemon_threads = True
    request_queue_size = 64

    def __init__(self, address, model: Model | None = None):
        self.files = static_files()
        self.model = self.network_json = None
        super().__init__(address, Handler)
        if model is not None:
            self.attach(model)

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
        return server_class(infos[0][4][:2], model)
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
