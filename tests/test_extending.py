"""The README's "Extending" examples run as written: own dataset, cost, penalty, optimizer, sweep."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def extending_blocks() -> list[str]:
    text = README.read_text()
    section = text.split("\n## Extending\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_the_extending_section_has_an_example_for_each_extension_point():
    code = "\n".join(extending_blocks())
    for piece in ("jd.Dataset(", "jd.Cost(", "penalty=", "optimizer=", "jd.make_step(", "jd.make_epoch(", "jd.sweep("):
        assert piece in code


def test_the_extending_examples_run_and_their_assertions_hold():
    namespace: dict = {}
    for number, block in enumerate(extending_blocks(), 1):
        exec(compile(block, f"README Extending block {number}", "exec"), namespace)
    assert namespace["result"].records  # the last block's sweep ran
