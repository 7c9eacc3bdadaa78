"""The live page (`jaxdigits serve`): HTTP rules, the CLI, and the page in a real headless Chromium.

Browser tests skip with a reason when Chromium and its driver are absent; with
JAXDIGITS_REQUIRE_BROWSER=1 (set by .ci/run) that is a failure instead.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import jaxdigits
from jaxdigits.data import DATA_DIR_ENV
from jaxdigits.images import load_digit_image
from jaxdigits.core.model import layer_activations
from jaxdigits import serve as serve_module
from jaxdigits.core.errors import ConfigError
from jaxdigits.serve import MAX_BODY, Handler, Model, load_model, make_server, static_files

REQUIRE_BROWSER_ENV = "JAXDIGITS_REQUIRE_BROWSER"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
PAD = 280


@pytest.fixture(scope="module")
def run_dir(mnist, tmp_path_factory) -> Path:
    """A small real network: the lesson's shape trained one epoch on the real MNIST."""
    out = tmp_path_factory.mktemp("serve") / "run"
    jaxdigits.train(jaxdigits.TrainConfig(epochs=1), mnist, out_dir=out)
    return out


def start(model):
    server = make_server(model, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def server(run_dir, mnist):
    network, info = jaxdigits.load_params(run_dir)
    server = start(Model(network, info, mnist))  # load_model's own data path runs in the CLI test
    yield server
    server.shutdown()
    server.server_close()


def request(server, method, path, body=None, headers=None):
    connection = http.client.HTTPConnection(*server.server_address[:2], timeout=10)
    try:
        connection.request(method, path, body, headers or {})
        response = connection.getresponse()
        return response.status, response.read(), response.getheader("Content-Type")
    finally:
        connection.close()


def http_request(server, start: str, *headers: str, body: bytes = b"") -> bytes:
    """A request as bytes: ``start`` (``"GET / HTTP/1.1"``), a Host naming this server, ``headers``, ``body``."""
    return "\r\n".join([start, "Host: {}:{}".format(*server.server_address[:2]), *headers, "", ""]).encode() + body


def raw(server, data: bytes, half_close: bool = False) -> bytes:
    """Send bytes as they are (no client-side normalisation) and return the whole answer."""
    with socket.create_connection(server.server_address[:2], timeout=10) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


def predict_body(grey: np.ndarray) -> bytes:
    return json.dumps({"pixels": grey.reshape(-1).tolist(), "width": grey.shape[1], "height": grey.shape[0]}).encode()


def a_canvas(mnist, index=0) -> np.ndarray:
    """Test digit ``index`` enlarged to a 280x280 grey canvas (0..255), as a page would send it."""
    return np.kron(np.round(mnist.test_images[index].reshape(28, 28) * 255), np.ones((10, 10))).astype(int)


# ---- HTTP ----------------------------------------------------------------------------------------


def test_page_files_and_api(server, run_dir, mnist):
    status, body, kind = request(server, "GET", "/")
    assert status == 200 and kind.startswith("text/html") and b'<canvas id="pad"' in body
    for name, kind_start in (("app.js", "text/javascript"), ("style.css", "text/css"), ("index.html", "text/html")):
        status, _, kind = request(server, "GET", f"/static/{name}")
        assert status == 200 and kind.startswith(kind_start)
    status, body, _ = request(server, "GET", "/api/network")
    summary = json.loads(body)
    network, _ = jaxdigits.load_params(run_dir)
    assert status == 200 and summary["sizes"] == [784, 16, 16, 10] and summary["examples"] is True
    np.testing.assert_allclose(summary["layers"][1]["w"], np.asarray(network[1]["w"]), atol=1e-5)

    status, body, _ = request(server, "POST", "/api/predict", predict_body(a_canvas(mnist)))
    answer = json.loads(body)
    framed = np.asarray(answer["input"], np.float32)
    assert status == 200 and framed.shape == (784,) and [len(a) for a in answer["activations"]] == [16, 16, 10]
    expected = layer_activations(network, framed[None, :])
    for got, want in zip(answer["activations"], expected[1:]):
        np.testing.assert_allclose(got, np.asarray(want[0]), atol=1e-4)
    assert answer["digit"] == int(np.argmax(expected[-1][0]))

    status, body, _ = request(server, "POST", "/api/predict", predict_body(np.zeros((40, 30), int)))
    assert status == 200 and json.loads(body) == {"blank": True}
    for kind in ("random", "mistake"):
        status, body, _ = request(server, "GET", f"/api/example?kind={kind}")
        example = json.loads(body)
        predicted = jaxdigits.predict(network, mnist.test_images[example["index"]][None, :])[0]
        assert status == 200 and example["digit"] == int(predicted[0]) and example["label"] == mnist.test_labels[example["index"]]
        assert kind == "random" or example["digit"] != example["label"]


def test_bad_requests_are_refused_and_the_server_stays_up(server, mnist):
    good = predict_body(a_canvas(mnist))
    assert request(server, "POST", "/api/predict", good)[0] == 200

    too_big = raw(server, http_request(server, "POST /api/predict HTTP/1.1", f"Content-Length: {MAX_BODY + 1}", body=b"{"))
    assert too_big.startswith(b"HTTP/1.1 413")
    malformed = [b"{bad", b"", b"[1, 2]", b'"text"', b"\xff\xfe", b"[" * 100000,
                 json.dumps({"pixels": [0] * 64, "width": 8}).encode(),
                 json.dumps({"pixels": [0] * 63, "width": 8, "height": 8}).encode(),
                 json.dumps({"pixels": [[0] * 8] * 8, "width": 8, "height": 8}).encode(),
                 json.dumps({"pixels": ["0"] * 64, "width": 8, "height": 8}).encode(),
                 json.dumps({"pixels": [True] * 64, "width": 8, "height": 8}).encode(),
                 json.dumps({"pixels": [0] * 63 + [None], "width": 8, "height": 8}).encode(),
                 json.dumps({"pixels": [0] * 63 + [256], "width": 8, "height": 8}).encode(),
                 json.dumps({"pixels": [0] * 63 + [-1], "width": 8, "height": 8}).encode(),
                 json.dumps({"pixels": [0] * 63 + [10 ** 40], "width": 8, "height": 8}).encode(),
                 b'{"pixels": [' + b"0, " * 63 + b'NaN], "width": 8, "height": 8}',
                 json.dumps({"pixels": [0] * 64, "width": 8.0, "height": 8}).encode(),
                 json.dumps({"pixels": [0] * 4, "width": 2, "height": 2}).encode(),
                 json.dumps({"pixels": [], "width": 4096, "height": 4096}).encode()]
    for body in malformed:
        status, answer, kind = request(server, "POST", "/api/predict", body, {"Content-Type": "application/json"})
        assert status == 400 and kind == "application/json" and json.loads(answer)["error"], body[:60]

    for path in ("/static/../../etc/passwd", "/static/%2e%2e/%2e%2e/etc/passwd", "/%2e%2e/%2e%2e/etc/passwd",
                 "/static/..%2f..%2fetc%2fpasswd", "/static/%252e%252e/etc/passwd", "/static/./app.js",
                 "/static//app.js", "/static/..\\..\\etc\\passwd", "/static/app.js%00.png", "/static/",
                 "/static", "/../jaxdigits/serve.py", "/serve.py", "/static/%ff", "/etc/passwd"):
        answer = raw(server, http_request(server, f"GET {path} HTTP/1.1", "Connection: close"))
        assert answer.startswith((b"HTTP/1.1 404", b"HTTP/1.1 403")), path
        assert b"root:" not in answer
    assert raw(server, http_request(server, "POST /api/predict HTTP/1.1", "Content-Length: 100", body=b'{"pix'),
               half_close=True).startswith(b"HTTP/1.1 400")
    assert raw(server, http_request(server, "POST /api/predict HTTP/1.1", "Content-Length: -5")).startswith(b"HTTP/1.1 400")
    assert raw(server, http_request(server, "POST /api/predict HTTP/1.1")).startswith(b"HTTP/1.1 411")
    assert raw(server, http_request(server, "POST /static/%ff HTTP/1.1", "Content-Length: 0")).startswith(b"HTTP/1.1 404")
    for garbage in (b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1 extra\r\n\r\n", b"\x00\xff\r\n\r\n"):
        assert b"400" in raw(server, garbage, half_close=True)  # the standard library's error page
    assert raw(server, http_request(server, "DELETE / HTTP/1.1", "Connection: close")).startswith(b"HTTP/1.1 501")
    assert request(server, "GET", "/api/example?kind=worst")[0] == 400
    raw(server, http_request(server, "POST /api/predict HTTP/1.1", "Content-Length: 50"), half_close=True)

    status, body, _ = request(server, "POST", "/api/predict", good)
    assert status == 200 and json.loads(body)["digit"] in range(10)


def status_for_host(server, host) -> tuple[int, str]:
    """The status and error of GET /api/network sent with ``Host: host``."""
    status, body, _ = request(server, "GET", "/api/network", headers={"Host": host})
    return status, json.loads(body).get("error", "") if status != 200 else ""


def test_a_host_header_naming_another_server_is_refused(server):
    """DNS rebinding: a page on evil.example whose name now points at 127.0.0.1 must not read the API."""
    port = server.server_address[1]
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}", f"[::1]:{port}"):
        assert status_for_host(server, host) == (200, ""), host
    for host in (f"evil.example:{port}", "evil.example", f"localhost.evil.example:{port}", f"127.0.0.1:{port + 1}",
                 "127.0.0.1", f"127.0.0.1:{port}@evil.example", f"192.0.2.7:{port}", " ", "x" * 5000):
        status, error = status_for_host(server, host)
        assert status == 421 and error.endswith(f"open {server.url}") and len(error) < 200, (host, status, error)
    missing = raw(server, b"GET /api/network HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert missing.startswith(b"HTTP/1.1 400") and b"Host header" in missing
    assert raw(server, b"GET /api/network HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.1 200")  # HTTP/1.0 needs no Host
    twice = raw(server, http_request(server, "GET /api/network HTTP/1.1", "Host: evil.example", "Connection: close"))
    assert twice.startswith(b"HTTP/1.1 400")


@pytest.mark.parametrize("bound, good, bad", [
    ("127.0.0.2", ["127.0.0.2", "localhost"], ["evil.example", "127.0.0.1.nip.io"]),
    ("0.0.0.0", ["192.0.2.7", "127.0.0.1", "localhost", "[::1]"], ["evil.example", "0.0.0.0.evil.example"]),
])
def test_a_server_bound_elsewhere_answers_to_its_own_address(server, bound, good, bad):
    """On a given address the server answers to that address (and, on every interface, to any IP
    address and this machine's names); any other name is refused."""
    try:
        other = make_server(server.model, bound, 0)
    except ConfigError as exc:
        pytest.skip(f"this machine cannot listen on {bound}: {exc}")
    threading.Thread(target=other.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        port = other.server_address[1]
        assert all(status_for_host(other, f"{name}:{port}")[0] == 200 for name in good)
        assert all(status_for_host(other, f"{name}:{port}")[0] == 421 for name in bad)
    finally:
        other.shutdown()
        other.server_close()


def test_only_regular_files_inside_the_static_folder_are_served(server, tmp_path, monkeypatch):
    """A symlink in the static folder is not followed, whether it leads out of the folder or not."""
    outside = tmp_path / "secret.js"
    outside.write_text("let secret = 'root:x:0:0'")
    static = tmp_path / "static"
    static.mkdir()
    (static / "index.html").write_text("<p>page</p>")
    (static / "app.js").write_text("let page = 1")
    (static / "secret.js").symlink_to(outside)
    (static / "copy.css").symlink_to(static / "app.js")
    (static / "folder.js").symlink_to(tmp_path)
    (static / "dangling.svg").symlink_to(tmp_path / "nothing")
    os.mkfifo(static / "pipe.png")
    assert sorted(static_files(static)) == ["/", "/static/app.js", "/static/index.html"]

    monkeypatch.setattr(serve_module, "STATIC_DIR", static)
    other = start(server.model)
    try:
        assert request(other, "GET", "/static/app.js")[:2] == (200, b"let page = 1")
        for name in ("secret.js", "copy.css", "folder.js", "dangling.svg", "pipe.png"):
            status, body, _ = request(other, "GET", f"/static/{name}")
            assert status == 404 and b"secret" not in body, name
    finally:
        other.shutdown()
        other.server_close()

    (static / "index.html").unlink()
    (static / "index.html").symlink_to(outside)
    with pytest.raises(ConfigError, match="no index.html"):
        static_files(static)


def statuses(answer: bytes) -> list[int]:
    """The status of every response in ``answer`` (a status line may follow a JSON body directly)."""
    return [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", answer)]


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_a_body_sent_with_a_get_is_never_read_as_a_request(server, method):
    """The body of a GET or HEAD is read and dropped: a request hidden in it is never answered."""
    hidden = http_request(server, "GET /hidden HTTP/1.1")
    first = http_request(server, f"{method} /api/network HTTP/1.1", f"Content-Length: {len(hidden)}", body=hidden)
    last = http_request(server, "GET /api/network HTTP/1.1", "Connection: close")
    assert statuses(raw(server, first + last)) == [200, 200]
    chunked = http_request(server, f"{method} /api/network HTTP/1.1", "Transfer-Encoding: chunked",
                           body=b"%x\r\n%s\r\n0\r\n\r\n" % (len(hidden), hidden))
    assert statuses(raw(server, chunked + last)) == [411]
    for lengths in (["5", "50"], ["+5"], ["5_0"], [" "]):
        sent = http_request(server, f"{method} /api/network HTTP/1.1", *(f"Content-Length: {n}" for n in lengths))
        assert statuses(raw(server, sent + b"hello" + last)) == [400], lengths


def trickle(server, start: bytes, byte: bytes, every: float = 0.1, limit: float = 10.0) -> tuple[bytes, float]:
    """Send ``start``, then ``byte`` every ``every`` seconds until the server answers and closes
    (or ``limit`` seconds pass); the answer and the seconds it took."""
    began = time.monotonic()
    answer = b""
    with socket.create_connection(server.server_address[:2], timeout=limit) as sock:
        sock.sendall(start)
        sock.settimeout(every)
        while time.monotonic() - began < limit:
            try:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
            except TimeoutError:
                with contextlib.suppress(OSError):
                    sock.sendall(byte)
            except ConnectionResetError:
                break
    return answer, time.monotonic() - began


def test_a_request_that_trickles_in_is_cut_off_at_its_deadline(server, monkeypatch):
    """A byte every 0.1 s never lets a read wait long, but the request as a whole must arrive in time."""
    monkeypatch.setattr(serve_module, "REQUEST_SECONDS", 1.0, raising=False)
    body_first = http_request(server, "POST /api/predict HTTP/1.1", "Content-Length: 100000")
    answer, took = trickle(server, body_first, b"0")
    assert answer.startswith(b"HTTP/1.1 408") and b"within 1 s" in answer and took < 4, (answer[:200], took)
    answer, took = trickle(server, b"GET /api/network HTTP/1.1\r\n", b"X")  # a head that never ends
    assert not answer.startswith(b"HTTP/1.1 200") and took < 4, (answer[:200], took)
    assert request(server, "GET", "/api/network")[0] == 200


def test_a_body_shorter_than_its_content_length_gets_408_not_500(server, monkeypatch):
    """The client sends 10 of 100 bytes and waits: a clean 408 naming the shortfall, never a 500."""
    monkeypatch.setattr(Handler, "timeout", 2)
    monkeypatch.setattr(serve_module, "REQUEST_SECONDS", 1.0, raising=False)
    start = http_request(server, "POST /api/predict HTTP/1.1", "Content-Length: 100", body=b"0" * 10)
    answer, took = trickle(server, start, b"", limit=6)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408") and took < 4, (answer[:300], took)
    assert "10 of the 100 bytes" in json.loads(body)["error"]


def test_concurrent_requests_get_their_own_answers(server, mnist):
    canvases = [a_canvas(mnist, i) for i in range(4)]
    expected = [json.loads(request(server, "POST", "/api/predict", predict_body(c))[1]) for c in canvases]

    def one(i):
        if i % 5 == 4:
            return request(server, "POST", "/api/predict", b"{broken")[0] == 400
        status, body, _ = request(server, "POST", "/api/predict", predict_body(canvases[i % 4]))
        return status == 200 and json.loads(body) == expected[i % 4]

    with ThreadPoolExecutor(12) as pool:
        assert all(pool.map(one, range(60)))


def test_without_data_the_examples_are_off(run_dir, monkeypatch):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    server = start(load_model(run_dir))
    try:
        summary = json.loads(request(server, "GET", "/api/network")[1])
        assert summary["examples"] is False and "--data-dir" in summary["examples_note"]
        status, body, _ = request(server, "GET", "/api/example?kind=random")
        assert status == 404 and "--data-dir" in json.loads(body)["error"]
    finally:
        server.shutdown()
        server.server_close()


def test_cli_serve_prints_its_address_refuses_a_taken_port_and_stops_on_ctrl_c(run_dir, mnist_dir):
    command = [sys.executable, "-m", "jaxdigits", "serve", str(run_dir), "--data-dir", str(mnist_dir)]
    first = subprocess.Popen(command + ["--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = first.stdout.readline()
        assert line.startswith("serving 784-16-16-10 at http://127.0.0.1:"), line + first.stderr.read()
        port = int(line.split("http://127.0.0.1:")[1].split("/")[0])
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("GET", "/api/network")
        assert connection.getresponse().status == 200
        connection.close()

        taken = subprocess.run(command + ["--port", str(port)], capture_output=True, text=True, timeout=60)
        assert taken.returncode == 2 and taken.stdout == ""
        assert taken.stderr.strip().splitlines() == [
            f"jaxdigits serve: error: port {port} on 127.0.0.1 is already taken; pick another with --port"]
    finally:
        first.send_signal(signal.SIGINT)
        _, err = first.communicate(timeout=30)
    assert first.returncode == 130 and err.strip().splitlines()[-1] == "interrupted; the server stopped", err
    assert "Traceback" not in err and "Exception ignored" not in err

    missing = subprocess.run(command[:4] + [str(run_dir / "nothing")], capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and len(missing.stderr.strip().splitlines()) == 1 and "Traceback" not in missing.stderr


def test_cli_serve_refuses_data_other_than_the_networks_as_evaluate_does(run_dir, fashion_mnist_dir):
    """A network trained on MNIST given the Fashion-MNIST folder: one line and exit 2, no page of
    clothing shown as "test digits"."""
    refusal = "the network was trained on mnist and these files are fashion_mnist; give --data-dir a folder with mnist"
    for command in (["serve", str(run_dir), "--port", "0"], ["evaluate", str(run_dir)]):
        done = subprocess.run([sys.executable, "-m", "jaxdigits", *command, "--data-dir", str(fashion_mnist_dir)],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and done.stdout == "", (command, done.stdout)
        assert done.stderr.strip().splitlines() == [f"jaxdigits {command[0]}: error: {refusal}"], done.stderr


# ---- in the browser --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("the selenium package")
    if missing:
        reason = f"needs a headless Chromium: {', '.join(missing)} missing (apt-get install chromium chromium-driver)"
        if os.environ.get(REQUIRE_BROWSER_ENV) == "1":
            pytest.fail(reason + f" ({REQUIRE_BROWSER_ENV}=1 makes this a failure)")
        pytest.skip(reason)
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1200,900", "--hide-scrollbars"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": 1200, "height": 800, "deviceScaleFactor": 1, "mobile": False})
    yield driver
    driver.quit()


def wait_for(driver, script, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if driver.execute_script(script):
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for: {script}")


def open_page(driver, server):
    driver.get(server.url)
    wait_for(driver, "return document.body.dataset.ready === '1'")


def wait_until_answered(driver):
    wait_for(driver, "const d = document.body.dataset; return d.busy === '0' && d.rendered === d.version")


def draw_digit(driver, digit: np.ndarray) -> None:
    """Draw a 28x28 digit on the pad with real pointer input, one stroke per run of ink along each
    row, scaled to the pad: pointer down, moves along the run, pointer up."""
    from selenium.webdriver.common.action_chains import ActionChains

    pad = driver.find_element("id", "pad")
    scale = PAD / 28
    actions = ActionChains(driver, duration=0)
    ink = digit.reshape(28, 28) > 0.5
    for row in range(28):
        cols = np.flatnonzero(ink[row])
        if not len(cols):
            continue
        for run in np.split(cols, np.flatnonzero(np.diff(cols) > 1) + 1):
            y = round((row + 0.5) * scale - PAD / 2)  # offsets from the pad's centre
            xs = [round((c + 0.5) * scale - PAD / 2) for c in range(run[0], run[-1] + 1)]
            actions.move_to_element_with_offset(pad, xs[0], y).click_and_hold()
            for x in xs[1:]:
                actions.move_to_element_with_offset(pad, x, y)
            actions.release()
    actions.perform()


def pad_png(driver, path: Path) -> Path:
    data = driver.execute_script("return document.getElementById('pad').toDataURL('image/png')")
    path.write_bytes(base64.b64decode(data.split(",", 1)[1]))
    return path


def neurons(driver) -> list[dict]:
    return driver.execute_script("""
        return [...document.querySelectorAll('#network .neuron')].map(g => ({
            layer: +g.dataset.layer, index: +g.dataset.index, activation: +g.dataset.activation,
            brightness: +g.querySelector('.light').getAttribute('fill-opacity')}));""")


def test_a_drawn_digit_reads_as_predict_reads_it(browser, server, run_dir, mnist, tmp_path):
    network, _ = jaxdigits.load_params(run_dir)
    open_page(browser, server)
    index = 0  # a 7
    draw_digit(browser, mnist.test_images[index])
    wait_until_answered(browser)

    # The library's own path on the same drawing: the pad as a PNG, load_digit_image, predict.
    framed = load_digit_image(pad_png(browser, tmp_path / "drawn.png"))
    digits, outputs = jaxdigits.predict(network, framed[None, :])
    shown = browser.find_element("id", "digit").text
    assert shown == str(int(digits[0])) == str(int(mnist.test_labels[index]))
    assert f"confidence {100 * float(outputs[0, int(digits[0])]):.0f}%" in browser.find_element("id", "confidence").text

    # What it sees: the page's 28x28 input is the framed drawing.
    seen = browser.execute_script("""
        const c = document.getElementById('input');
        return Array.from(c.getContext('2d').getImageData(0, 0, 28, 28).data).filter((_, i) => i % 4 === 0);""")
    np.testing.assert_allclose(np.asarray(seen) / 255, framed, atol=1 / 255 + 1e-6)

    # The network lit up: every circle's brightness is its activation (sigmoid), within rounding.
    activations = [np.asarray(a[0]) for a in layer_activations(network, framed[None, :])]
    drawn = neurons(browser)
    assert [sum(n["layer"] == layer for n in drawn) for layer in range(4)] == [16, 16, 16, 10]
    for n in drawn:
        value = float(activations[n["layer"]][n["index"]])
        assert abs(n["activation"] - value) < 1e-3 and abs(n["brightness"] - value) < 2e-3, n
    inputs_shown = sorted(n["index"] for n in drawn if n["layer"] == 0)
    assert min(activations[0][inputs_shown]) >= np.sort(activations[0])[-16] - 1e-3  # the most active pixels
    assert browser.find_element("css selector", "#network .more").text == "+768 more"
    assert browser.find_elements("css selector", "#network .edge")  # connections into lit neurons
    bars = {int(b.get_attribute("data-digit")): float(b.get_attribute("data-value"))
            for b in browser.find_elements("css selector", "#outputs .bar")}
    np.testing.assert_allclose([bars[d] for d in range(10)], activations[-1], atol=1e-3)

    # Hovering a neuron shows its incoming weights: a 28x28 image in the first layer, bars deeper.
    from selenium.webdriver.common.action_chains import ActionChains

    first = browser.find_element("css selector", '#network .neuron[data-layer="1"][data-index="3"]')
    ActionChains(browser).move_to_element(first).perform()
    assert browser.find_elements("css selector", "#neuron canvas.weights-image")
    second = browser.find_element("css selector", '#network .neuron[data-layer="2"][data-index="5"]')
    ActionChains(browser).move_to_element(second).perform()
    weights = [float(r.get_attribute("data-weight")) for r in browser.find_elements("css selector", "#neuron svg rect")]
    np.testing.assert_allclose(weights, np.asarray(network[1]["w"])[:, 5], atol=1e-3)

    browser.find_element("id", "clear").click()
    assert browser.find_element("id", "digit").text == "–"


def test_the_example_buttons_show_test_digits_and_real_mistakes(browser, server, run_dir, mnist):
    network, _ = jaxdigits.load_params(run_dir)
    predictions = np.asarray(jaxdigits.predict(network, mnist.test_images)[0])
    open_page(browser, server)
    for button, tries in (("mistake", 3), ("random", 2)):
        for _ in range(tries):
            browser.execute_script("delete document.getElementById('caption').dataset.index")
            browser.find_element("id", button).click()
            wait_for(browser, "return document.getElementById('caption').dataset.index !== undefined")
            caption = browser.find_element("id", "caption")
            index, label = int(caption.get_attribute("data-index")), int(caption.get_attribute("data-label"))
            shown = int(browser.find_element("id", "digit").text)
            assert label == mnist.test_labels[index] and shown == predictions[index]
            assert button == "random" or shown != label, (index, label, shown)
            assert f"labelled {label}" in caption.text


def test_without_data_the_buttons_are_disabled_with_a_note(browser, run_dir, monkeypatch):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    server = start(load_model(run_dir))
    try:
        open_page(browser, server)
        assert not browser.find_element("id", "random").is_enabled()
        assert not browser.find_element("id", "mistake").is_enabled()
        assert "--data-dir" in browser.find_element("id", "caption").text
    finally:
        server.shutdown()
        server.server_close()
