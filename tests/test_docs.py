"""The docs run as written and hold together.

- every ```python block of docs/extending.md runs, in order, in one namespace (own dataset, cost,
  penalty, optimizer, the pure pieces, a sweep), and so do the README's blocks, on the real MNIST;
- docs/cli.md names every ``TrainConfig`` field, as the flag it is;
- the README stays a page, and every relative link in it and in docs/ points to a file (and a
  heading) that exists.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import subprocess
import sys
from pathlib import Path

import pytest

import jaxdigits as jd

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
README_MAX_LINES = 260
DATA_PLACEHOLDER = '"path/to/mnist"'

FENCE = re.compile(r"^```.*?^```[ \t]*$", re.S | re.M)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)


def python_blocks(page: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", page.read_text(), re.S | re.M)


def run_blocks(blocks: list[str], label: str, namespace: dict) -> dict:
    for number, block in enumerate(blocks, 1):
        exec(compile(block, f"{label} python block {number}", "exec"), namespace)
    return namespace


# docs/extending.md


def test_the_extending_page_has_an_example_for_each_extension_point():
    code = "\n".join(python_blocks(DOCS / "extending.md"))
    for piece in ("jd.Dataset(", "jd.Cost(", "penalty=", "optimizer=", "jd.make_step(", "jd.make_epoch(", "jd.sweep("):
        assert piece in code, f"docs/extending.md has no example using {piece}"


def test_the_extending_examples_run_and_their_assertions_hold():
    namespace = run_blocks(python_blocks(DOCS / "extending.md"), "docs/extending.md", {})
    assert namespace["result"].records  # the last block's sweep ran


# README.md


def test_the_readme_examples_run_on_the_real_mnist(mnist_dir):
    blocks = python_blocks(README)
    assert blocks and DATA_PLACEHOLDER in blocks[0], "the README's first python block loads path/to/mnist"
    blocks = [block.replace(DATA_PLACEHOLDER, repr(str(mnist_dir))) for block in blocks]
    namespace = run_blocks(blocks, "README.md", {})
    assert namespace["data"].name == "mnist"
    assert namespace["result"].status == "ok"


def test_the_readme_fits_a_page():
    lines = len(README.read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move reference material to docs/"


# docs/cli.md


@functools.cache
def command_flags(command: str) -> frozenset[str]:
    """The flags ``jaxdigits COMMAND --help`` lists."""
    shown = subprocess.run(
        [sys.executable, "-m", "jaxdigits", command, "--help"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    assert shown.returncode == 0, shown.stderr
    return frozenset(re.findall(r"(?<![\w-])--[a-z0-9][a-z0-9-]*", shown.stdout))


def field_rows() -> dict[str, str]:
    """docs/cli.md's field table: field name -> the rest of its row."""
    text = (DOCS / "cli.md").read_text()
    return dict(re.findall(r"^\| `(\w+)` \|(.*)$", text, re.M))


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(jd.TrainConfig)])
def test_the_cli_page_names_every_config_field_as_its_flag(field):
    flag = "--" + field.replace("_", "-")
    row = field_rows().get(field)
    assert row is not None, f"docs/cli.md's field table has no row for TrainConfig.{field}"
    is_flag = flag in command_flags("train")
    assert is_flag == (flag in command_flags("sweep")), f"{flag} must be a flag of both train and sweep, or of neither"
    if is_flag:
        assert f"`{flag}`" in row, f"docs/cli.md's row for {field} does not name its flag {flag}"
    else:
        assert "Python only" in row, f"{field} has no flag: docs/cli.md must say it is set from Python only"
        assert flag not in (DOCS / "cli.md").read_text(), f"docs/cli.md names {flag}, which is no flag"


CHOICE_FIELDS = {f.name: f.metadata["setting"].choices for f in dataclasses.fields(jd.TrainConfig) if f.metadata["setting"].choices}


@pytest.mark.parametrize("field", sorted(CHOICE_FIELDS))
def test_the_cli_page_names_every_value_a_named_field_takes(field):
    row = field_rows()[field]
    missing = [name for name in CHOICE_FIELDS[field] if f"`{name}`" not in row]
    assert not missing, f"docs/cli.md's row for {field} does not name {missing}"


# links


def pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def without_code(text: str) -> str:
    return FENCE.sub("", text)


def anchors(page: Path) -> set[str]:
    """The heading anchors of a Markdown page, as GitHub makes them."""
    found = set()
    for heading in HEADING.findall(without_code(page.read_text())):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        found.add(slug)
    return found


@pytest.mark.parametrize("page", pages(), ids=lambda page: page.relative_to(ROOT).as_posix())
def test_every_relative_link_points_to_a_file_that_exists(page):
    targets = LINK.findall(without_code(page.read_text()))
    assert page != README or any(t.startswith("docs/") for t in targets), "the README links to no docs page"
    for target in targets:
        if re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*:", target):
            continue  # http:, https:, mailto:
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        where = f"{page.relative_to(ROOT)} links to {target}"
        assert file.exists(), f"{where}, which does not exist"
        if anchor and file.suffix == ".md":
            assert anchor in anchors(file), f"{where}: {file.name} has no heading #{anchor}"


def test_the_readme_links_every_docs_page():
    linked = {(README.parent / target.partition("#")[0]).resolve() for target in LINK.findall(README.read_text())}
    for page in sorted(DOCS.glob("*.md")):
        assert page.resolve() in linked, f"README.md does not link {page.relative_to(ROOT)}"
