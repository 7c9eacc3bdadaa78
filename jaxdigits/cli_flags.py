"""The flags the commands share: one per ``TrainConfig`` field, the data folder, ``--out``, counts."""

from __future__ import annotations

import argparse
from pathlib import Path

from jaxdigits.core.errors import ConfigError


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _parsed(name: str):
    """An argparse type that checks a flag's text with the run schema's own coercion."""
    from jaxdigits.core.config import coerce

    def parse(text: str):
        try:
            return coerce(name, text, text=True)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix(f"{name}: ")) from None

    return parse


def add_config_flags(parser: argparse.ArgumentParser, many: bool = False) -> None:
    """A flag per ``TrainConfig`` field (``--batch-size`` for ``batch_size``), Python-only fields
    aside; with ``many`` each takes one or more values (sweep axes). Unset flags stay ``None``."""
    from jaxdigits.core.config import DEFAULTS, FIELDS, describe

    for name, setting in FIELDS.items():
        if setting.kind == "function":
            continue
        default = describe(getattr(DEFAULTS, name))
        shown = ",".join(map(str, default)) if isinstance(default, list) else default
        parser.add_argument(
            _flag(name), dest=name, type=_parsed(name), nargs="+" if many else None,
            metavar="|".join(setting.choices) if setting.choices else name.upper(),
            help=f"{'one or more: ' if many else ''}{setting.help} (default {shown})",
        )


def add_data_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir", type=Path, help="folder with the four IDX files (else $JAXDIGITS_DATA_DIR, else download via TFDS)"
    )


def out_folder(text: str) -> Path:
    if not text.strip():
        raise argparse.ArgumentTypeError("--out must name a folder")
    path = Path(text)
    if path.resolve() == Path(path.resolve().anchor):
        raise argparse.ArgumentTypeError(f"{text!r} is the root folder; give a folder of its own")
    return path


def config_overrides(args: argparse.Namespace) -> dict:
    """The config fields given explicitly on the command line."""
    from jaxdigits.core.config import FIELDS

    return {name: getattr(args, name) for name in FIELDS if getattr(args, name, None) is not None}


def positive(flag: str, limit: int = 1 << 20):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not 1 <= value <= limit:
            raise argparse.ArgumentTypeError(f"{value} must be between 1 and {limit}")
        return value

    return parse


def seed_flag(text: str) -> int:
    """A seed checked as the run schema checks ``seed`` (0..2**32-1)."""
    return _parsed("seed")(text)
