"""The README's picture of the live page: a digit drawn with a few pen strokes, a first-layer
neuron under the pointer, in headless Chromium at 1200x800.

    python experiments/serve_screenshot.py --run runs/lesson --data-dir path/to/mnist --out docs/figures/serve.png

Needs Chromium and its driver (Debian: ``apt-get install chromium chromium-driver``) and selenium.
"""

from __future__ import annotations

import argparse
import io
import threading
import time
from pathlib import Path

import numpy as np

from jaxdigits.serve import load_model, make_server


def five() -> list[np.ndarray]:
    """A handwritten 5 as three pen strokes on a 280x280 pad, each an (n, 2) array of points."""
    bar = np.stack([np.linspace(196, 100, 12), np.linspace(52, 58, 12)], 1)
    stem = np.stack([np.linspace(100, 92, 10), np.linspace(58, 128, 10)], 1)
    angle = np.linspace(-0.75 * np.pi, 0.78 * np.pi, 40)
    bowl = np.stack([136 + 62 * np.cos(angle - 0.25), 178 + 58 * np.sin(angle - 0.25)], 1)
    bowl[0] = (92, 128)
    return [bar, stem, bowl]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a run folder or params.safetensors")
    parser.add_argument("--data-dir", type=Path, help="MNIST folder (else $JAXDIGITS_DATA_DIR)")
    parser.add_argument("--out", type=Path, default=Path("docs/figures/serve.png"))
    parser.add_argument("--neuron", type=int, help="the first-layer neuron to hover over (default: the most active)")
    args = parser.parse_args()

    from PIL import Image
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains

    server = make_server(load_model(args.run, args.data_dir), "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--hide-scrollbars"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                               {"width": 1200, "height": 800, "deviceScaleFactor": 1, "mobile": False})
        driver.get(server.url)
        while driver.execute_script("return document.body.dataset.ready") != "1":
            time.sleep(0.05)
        pad = driver.find_element("id", "pad")
        actions = ActionChains(driver, duration=10)
        for stroke in five():
            points = np.round(stroke - 140).astype(int)  # offsets from the pad's centre
            actions.move_to_element_with_offset(pad, *points[0]).click_and_hold()
            for x, y in points[1:]:
                actions.move_to_element_with_offset(pad, x, y)
            actions.release()
        actions.perform()
        while driver.execute_script("const d = document.body.dataset; return d.busy !== '0' || d.rendered !== d.version"):
            time.sleep(0.05)
        if args.neuron is None:
            args.neuron = driver.execute_script("""
                const first = [...document.querySelectorAll('#network .neuron[data-layer="1"]')];
                return +first.reduce((a, b) => (+b.dataset.activation > +a.dataset.activation ? b : a)).dataset.index;""")
        neuron = driver.find_element("css selector", f'#network .neuron[data-layer="1"][data-index="{args.neuron}"]')
        ActionChains(driver).move_to_element(neuron).perform()
        time.sleep(0.2)
        answer = driver.find_element("id", "digit").text
        image = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
    finally:
        driver.quit()
        server.shutdown()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    image.save(args.out, optimize=True)
    print(f"{args.out}: {image.size[0]}x{image.size[1]}, {args.out.stat().st_size // 1024} KB; the page reads a {answer}")


if __name__ == "__main__":
    main()
