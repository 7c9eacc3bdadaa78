"""A search space: for each config field searched, a distribution, from a TOML/JSON file or flags.

    lr = {log = [0.01, 30]}            # log-uniform between two positive numbers
    l2 = {uniform = [0, 1e-3]}         # uniform
    optimizer = ["sgd", "adam"]        # a list: one of these values
    hidden = [[16, 16], [32], [64, 64]]
    batch_size = {int_log = [8, 256]}  # integers (``int`` for evenly spaced ones)

On the command line the same as ``--param lr=log:0.01:30``, ``--param batch_size=10,32,128`` (a
shape's widths joined by ``x``: ``--param hidden=16x16,32,64x64``). Every value is checked as
the config field checks it; an empty or inverted range, a log range that reaches 0, a range on
a field that is not a number, a list that is empty, and a field a search sets itself
(``epochs``, ``validation``, ``select``, ``seed``, ...) are refused in one line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, NamedTuple

from jaxdigits.core.config import FIELDS, TrainConfig, axis_values, coerce, describe
from jaxdigits.core.errors import ConfigError

KINDS = ("log", "uniform", "int", "int_log")
# Fields a search decides itself, or that cannot vary between trials.
NOT_SEARCHED = ("epochs", "validation", "select", "patience", "seed", "dataset", "dtype", "penalty")


class Dimension(NamedTuple):
    """One searched field: ``kind`` is one of ``KINDS`` (with ``low``, ``high``) or ``choice``
    (with ``choices``, the config values)."""

    field: str
    kind: str
    low: float | None = None
    high: float | None = None
    choices: tuple = ()

    def to_json(self) -> dict:
        if self.kind == "choice":
            return {"field": self.field, "choice": [describe(c) for c in self.choices]}
        return {"field": self.field, self.kind: [self.low, self.high]}


def dimension(field: str, spec: Any, text: bool = False) -> Dimension:
    """The ``Dimension`` of ``field`` from a file's value (a list or a one-key table)."""
    if field not in FIELDS:
        raise ConfigError(f"search space: {field!r} is not a config field; known fields: {', '.join(FIELDS)}")
    if field in NOT_SEARCHED:
        raise ConfigError(f"search space: {field} is set by the search itself (or cannot vary); leave it out")
    if isinstance(spec, list):
        if not spec:
            raise ConfigError(f"search space: {field} lists no values")
        return Dimension(field, "choice", choices=axis_values(field, spec, text))
    if not (isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in KINDS):
        raise ConfigError(f"search space: {field} = {spec!r}; give a list of values or one of "
                          f"{{{', '.join(f'{k} = [low, high]' for k in KINDS)}}}")
    (kind, bounds), = spec.items()
    return _range(field, kind, bounds, text)


def _range(field: str, kind: str, bounds: Any, text: bool) -> Dimension:
    setting = FIELDS[field]
    if setting.kind not in ("int", "float") or (kind.startswith("int") and setting.kind != "int"):
        what = "an integer" if kind.startswith("int") else "a number"
        raise ConfigError(f"search space: {field} is not {what}; give it a list of values")
    if setting.kind == "int" and not kind.startswith("int"):
        raise ConfigError(f"search space: {field} is an integer; give it int = [low, high] or int_log = [low, high]")
    if not (isinstance(bounds, (list, tuple)) and len(bounds) == 2):
        raise ConfigError(f"search space: {field}: {kind} takes [low, high]")
    try:
        low, high = (coerce(field, b, text) for b in bounds)
    except ConfigError as exc:
        raise ConfigError(f"search space: {field}: the {kind} range [{bounds[0]}, {bounds[1]}] has a bound the field "
                          f"refuses ({exc}); give bounds the field takes") from None
    if not low < high:
        raise ConfigError(f"search space: {field}: the range [{low:g}, {high:g}] is empty or inverted; give low < high")
    if kind in ("log", "int_log") and low <= 0:
        raise ConfigError(f"search space: {field}: a log range needs low > 0, got {low:g}")
    return Dimension(field, kind, low, high)


def parse_space(values: Any, text: bool = False) -> dict[str, Dimension]:
    """A space from a dict of field -> spec (the form of a space file)."""
    if not isinstance(values, dict) or not values:
        raise ConfigError("search space: give at least one field, e.g. lr = {log = [0.01, 30]}")
    return {field: dimension(field, spec, text) for field, spec in values.items()}


def parse_param(text: str) -> tuple[str, Any]:
    """``lr=log:0.01:30`` or ``batch_size=10,32,128`` (``hidden=16x16,32``) as ``(field, spec)``."""
    field, sep, value = text.partition("=")
    if not sep or not field or not value:
        raise ConfigError(f"--param {text!r}: give FIELD=KIND:LOW:HIGH or FIELD=V1,V2,...")
    field = field.strip().replace("-", "_")
    parts = value.split(":")
    if parts[0] in KINDS:
        if len(parts) != 3:
            raise ConfigError(f"--param {text!r}: a range is {parts[0]}:LOW:HIGH")
        return field, {parts[0]: parts[1:]}
    if len(parts) > 1:
        raise ConfigError(f"--param {text!r}: {parts[0]!r} is not a kind of range; give one of "
                          f"{', '.join(KINDS)} first, e.g. {field}=uniform:{':'.join(parts[-2:])}")
    values = [v.replace("x", ",") if field == "hidden" else v for v in value.split(",")]
    return field, values


def load_space(path: str | os.PathLike | None = None, params: tuple[str, ...] = ()) -> dict[str, Dimension]:
    """The space of a ``.toml``/``.json`` file, with ``--param`` values added or overriding."""
    from jaxdigits.files import read_regular_file

    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if path.suffix.lower() not in (".toml", ".json"):
            raise ConfigError(f"{path}: a search space file must end in .toml or .json")
        text = read_regular_file(path, "search space file", ConfigError).decode("utf-8", errors="replace")
        try:
            values = _parse_text(text, path.suffix.lower())
        except (ValueError, TypeError, RecursionError) as exc:
            raise ConfigError(f"{path}: not a valid search space file ({str(exc).splitlines()[0]})") from None
    space = parse_space(values, text=False) if values else {}
    for field, spec in map(parse_param, params):
        space[field] = dimension(field, spec, text=True)
    if not space:
        raise ConfigError("search: give a search space (--space FILE, or --param FIELD=...)")
    return space


def _parse_text(text: str, suffix: str) -> Any:
    if suffix == ".toml":
        import tomllib

        return tomllib.loads(text)
    return json.loads(text)


def space_json(space: dict[str, Dimension]) -> list[dict]:
    """The space as plain data: what a study records, and compares when it is resumed."""
    return [d.to_json() for d in space.values()]


def distributions(space: dict[str, Dimension]) -> dict[str, Any]:
    """Optuna's distributions for the space (choices by their JSON text: Optuna stores plain values)."""
    import optuna.distributions as od

    made = {}
    for field, d in space.items():
        if d.kind == "choice":
            made[field] = od.CategoricalDistribution([json.dumps(describe(c)) for c in d.choices])
        elif d.kind in ("int", "int_log"):
            made[field] = od.IntDistribution(int(d.low), int(d.high), log=d.kind == "int_log")
        else:
            made[field] = od.FloatDistribution(d.low, d.high, log=d.kind == "log")
    return made


def config_of(params: dict[str, Any], space: dict[str, Dimension], base: TrainConfig, **fixed: Any) -> TrainConfig:
    """The trial's ``TrainConfig``: ``base`` with the sampled ``params`` and ``fixed`` fields."""
    values = {f: json.loads(v) if space[f].kind == "choice" else v for f, v in params.items() if f in space}
    return base.replace(**values, **fixed)


# Population-based training's explore step: each traced number a range searches is multiplied
# by one of these, then clipped to its range.
PERTURB_FACTORS = (0.8, 1.2)


def perturbable(space: dict[str, Dimension]) -> list[str]:
    """The fields of ``space`` population-based training perturbs: ranges (not lists) of the
    numbers a compiled program takes as values (``lr``, ``l2``, ``dropout``, ``momentum``,
    ``b1``, ``b2``, the augmentation strengths)."""
    from jaxdigits.core.config import AUGMENT_NUMBERS, UPDATE_NUMBERS

    return [f for f, d in space.items() if d.kind in ("log", "uniform") and f in UPDATE_NUMBERS + AUGMENT_NUMBERS]


def perturb(params: dict[str, Any], space: dict[str, Dimension], base: TrainConfig,
            rng) -> tuple[dict[str, Any], dict[str, float]]:
    """``(params, factors)``: a trial's ``params`` with each ``perturbable`` field multiplied by
    a factor drawn from ``PERTURB_FACTORS`` and clipped to its range, and the factor each got.
    Lists (categorical and structural fields) keep their values, and so does a number whose new
    value would change the program (``program_key``: ``l2`` or dropout switched on or off, a
    rate an optimizer factory needs as a Python number)."""
    from jaxdigits.core.config import program_key

    program = program_key(config_of(params, space, base))
    out, factors = dict(params), {}
    for field in perturbable(space):
        d, factor = space[field], float(rng.choice(PERTURB_FACTORS))
        value = min(max(params[field] * factor, d.low), d.high)
        if program_key(config_of({**out, field: value}, space, base)) == program:
            out[field], factors[field] = value, factor
    return out, factors
