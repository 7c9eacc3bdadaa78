"""The run schema: every setting of a run, once, with its type, range and help.

``TrainConfig`` is the one place a setting is defined. Its field names are the names used
everywhere: ``jaxdigits train`` flags (``--batch-size`` for ``batch_size``), ``jaxdigits sweep``
flags and grid-file keys (each taking a list of values), ``jd.sweep(...)`` keywords, result
records and ``run.json``. Each field carries a ``Setting`` (kind, range, help) in its metadata,
and one coercion, ``coerce``, checks a value from Python, a flag or a grid file the same way: a
wrong type or value raises ``ConfigError`` naming the field. Adding a field here adds its flag,
its sweep axis, its record column and its validation.

A ``SweepGrid`` maps field names to lists of values; every combination is one ``TrainConfig``.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any, Callable, Iterable

from jaxdigits.core.costs import COSTS
from jaxdigits.core.dataset import DATASETS
from jaxdigits.core.errors import ConfigError
from jaxdigits.core.model import ACTIVATIONS, INITS
from jaxdigits.core.optimizers import OPTIMIZERS, SCHEDULES, takes_traced_rate

SEED_LIMIT = 2**32  # jax.random.PRNGKey takes 32-bit seeds; larger ones would alias smaller ones
COUNT_LIMIT = 2**31 - 1
DTYPES = ("float32", "float64")
AUGMENTS = ("none", "affine", "elastic")
SELECTS = ("last", "best")


@dataclasses.dataclass(frozen=True)
class Setting:
    """How one config field is typed and checked.

    ``kind``: ``int``, ``float``, ``name`` (one of ``choices``, or any name when ``choices`` is
    empty), ``widths`` (a tuple of ints, ``16,16`` or ``none`` on the command line), or
    ``function`` (Python-only: a callable or ``None``). ``extensible``: besides a name, a user's
    object is accepted (``accepts(value)`` decides). ``low``/``high`` bound numbers; ``above``
    makes ``low`` exclusive.
    """

    kind: str
    help: str
    choices: tuple = ()
    low: float | None = None
    high: float | None = None
    above: bool = False
    accepts: Callable[[Any], bool] | None = None


def _setting(default: Any, **spec: Any):
    return dataclasses.field(default=default, metadata={"setting": Setting(**spec)})


def _is_cost_object(value: Any) -> bool:
    return callable(getattr(value, "per_example", None)) and isinstance(getattr(value, "output", None), str)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run. The defaults reproduce the lesson.

    The network's input size and class count come from the data: ``hidden`` is only the hidden
    layers (``(16, 16)`` gives 784-16-16-10 on MNIST). ``cost`` and ``optimizer`` take a name or
    your own object (a cost with ``per_example``/``output``; a function of the learning rate that
    returns an optax ``GradientTransformation``); ``penalty`` a function of
    ``(network, images, labels)`` added to the cost.
    """

    hidden: tuple[int, ...] = _setting((16, 16), kind="widths", help="hidden-layer widths, e.g. 16,16 (none: no hidden layer)", low=1, high=2**20)
    activation: str = _setting("sigmoid", kind="name", help="hidden-layer activation (jax.nn's, or one registered)",
                               choices=tuple(ACTIVATIONS), accepts=lambda name: isinstance(name, str) and name in ACTIVATIONS)
    cost: Any = _setting("quadratic", kind="name", help="cost function", choices=tuple(COSTS), accepts=_is_cost_object)
    penalty: Any = _setting(None, kind="function", help="extra penalty f(network, images, labels) (Python only)")
    optimizer: Any = _setting("sgd", kind="name", help="optimizer (momentum: SGD with --momentum)", choices=tuple(OPTIMIZERS), accepts=callable)
    lr: float = _setting(3.0, kind="float", help="learning rate", low=0.0, above=True)
    momentum: float = _setting(0.9, kind="float", help="optimizer momentum: its momentum coefficient", low=0.0, high=0.9999)
    b1: float = _setting(0.9, kind="float", help="optimizer adam: decay of the first-moment estimate", low=0.0, high=0.9999)
    b2: float = _setting(0.999, kind="float", help="optimizer adam: decay of the second-moment estimate", low=0.0, high=0.999999)
    batch_size: int = _setting(10, kind="int", help="mini-batch size", low=1, high=COUNT_LIMIT)
    epochs: int = _setting(30, kind="int", help="epochs", low=1, high=10**6)
    seed: int = _setting(0, kind="int", help="random seed", low=0, high=SEED_LIMIT - 1)
    l2: float = _setting(0.0, kind="float", help="L2 penalty coefficient: adds l2 * 1/2 sum w^2", low=0.0)
    schedule: str = _setting("constant", kind="name", help="learning-rate schedule over the whole run (scales lr)", choices=tuple(SCHEDULES))
    init: str = _setting("lesson", kind="name", help="weight init: lesson N(0,1/fan_in) and N(0,1) biases, he, glorot", choices=tuple(INITS))
    dropout: float = _setting(0.0, kind="float", help="dropout rate on hidden layers while training (0: off)", low=0.0, high=0.95)
    augment: str = _setting("none", kind="name", help="distort each training image anew every step: affine, or elastic (with the affine)", choices=AUGMENTS)
    rotation: float = _setting(10.0, kind="float", help="augment: largest rotation, degrees", low=0.0, high=180.0)
    scale: float = _setting(0.1, kind="float", help="augment: largest relative scaling", low=0.0, high=1.0)
    shear: float = _setting(10.0, kind="float", help="augment: largest shear, degrees", low=0.0, high=60.0)
    shift: float = _setting(2.0, kind="float", help="augment: largest shift, pixels", low=0.0, high=14.0)
    elastic_alpha: float = _setting(8.0, kind="float", help="augment elastic: displacement scale alpha, pixels", low=0.0, high=100.0)
    elastic_sigma: float = _setting(3.0, kind="float", help="augment elastic: smoothing width sigma, pixels", low=0.5, high=20.0)
    dataset: str = _setting("mnist", kind="name", help="dataset to load (your own arrays: any name)", choices=DATASETS)
    dtype: str = _setting("float32", kind="name", help="float type of params and data (float64 needs jax_enable_x64)", choices=DTYPES)
    validation: int = _setting(0, kind="int", help="hold out the last N training images for validation, never trained on (0: none)", low=0, high=COUNT_LIMIT)
    select: str = _setting("last", kind="name", help="the network a run keeps: the last epoch's, or the best on validation", choices=SELECTS)
    patience: int = _setting(0, kind="int", help="stop when validation accuracy has not improved for N epochs (0: never)", low=0, high=10**6)

    def __post_init__(self):
        for field in dataclasses.fields(self):
            object.__setattr__(self, field.name, coerce(field.name, getattr(self, field.name)))

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with ``changes`` applied (and checked)."""
        unknown = sorted(set(changes) - set(FIELDS))
        if unknown:
            raise ConfigError(f"unknown config fields {unknown}; known fields: {', '.join(FIELDS)}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready plain data: your own cost, optimizer or penalty appear by name."""
        return {name: describe(getattr(self, name)) for name in FIELDS}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        """The inverse of ``to_dict`` for named settings; unknown keys are an error."""
        if not isinstance(values, dict):
            raise ConfigError(f"a config must be a table of fields, got {type(values).__name__}")
        unknown = sorted(set(values) - set(FIELDS))
        if unknown:
            raise ConfigError(f"unknown config fields {unknown}; known fields: {', '.join(FIELDS)}")
        return cls(**values)


FIELDS: dict[str, Setting] = {f.name: f.metadata["setting"] for f in dataclasses.fields(TrainConfig)}


def describe(value: Any) -> Any:
    """A setting as plain JSON data: tuples as lists, objects and functions by name."""
    if isinstance(value, tuple):
        return list(value)
    if value is None or isinstance(value, (str, int, float)):
        return value
    return getattr(value, "name", None) or getattr(value, "__name__", None) or type(value).__name__


def _number(name: str, setting: Setting, value: Any, text: bool) -> int | float:
    integer = setting.kind == "int"
    if text and isinstance(value, str):
        try:
            value = int(value) if integer else float(value)
        except ValueError:
            raise ConfigError(f"{name}: {value!r} is not {'an integer' if integer else 'a number'}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        if integer and isinstance(value, float) and value.is_integer() and math.isfinite(value):
            value = int(value)  # 5.0 from a JSON grid file is 5; 1.5 is refused below
        else:
            raise ConfigError(f"{name}: {value!r} is not {'an integer' if integer else 'a number'}")
    value = int(value) if integer else float(value)
    if not math.isfinite(value):
        raise ConfigError(f"{name}: {value} is not a finite number")
    low, high = setting.low, setting.high
    if low is not None and (value <= low if setting.above else value < low):
        raise ConfigError(f"{name}: {value} must be {'>' if setting.above else '>='} {low:g}")
    if high is not None and value > high:
        raise ConfigError(f"{name}: {value} must be at most {int(high) if integer else f'{high:g}'}")
    return value


def _widths(name: str, setting: Setting, value: Any, text: bool) -> tuple[int, ...]:
    if text and isinstance(value, str):
        parts = [] if value.strip().lower() == "none" else value.replace(" ", "").split(",")
        value = []
        for part in parts:
            try:
                value.append(int(part))
            except ValueError:
                raise ConfigError(f"{name}: {part!r} is not a width; give widths like 16,16, or none") from None
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{name}: {value!r} is not a list of widths, e.g. (16, 16)")
    width_setting = dataclasses.replace(setting, kind="int")
    return tuple(_number(name, width_setting, width, False) for width in value)


def _hashable(name: str, value: Any) -> Any:
    """Your own cost, optimizer or penalty keys compiled programs, so it must be hashable."""
    try:
        hash(value)
    except TypeError:
        raise ConfigError(f"{name}: {type(value).__name__} objects are not hashable, and a compiled program is keyed by "
                          "them; make it a frozen dataclass (@dataclass(frozen=True)) or use jd.Cost") from None
    return value


def _dataset_name(value: str) -> bool:
    """A name your own data may carry: letters, digits, ``_``, ``-`` and ``.`` (``3-5-8``)."""
    return bool(value) and len(value) <= 100 and all(c.isalnum() or c in "_-." for c in value)


def coerce(name: str, value: Any, text: bool = False) -> Any:
    """``value`` checked (and converted) for field ``name``; ``text`` allows command-line strings
    for numbers and widths. Raises ``ConfigError`` naming the field and what is allowed."""
    setting = FIELDS[name] if name in FIELDS else None
    if setting is None:
        raise ConfigError(f"unknown config field {name!r}; known fields: {', '.join(FIELDS)}")
    if setting.kind in ("int", "float"):
        return _number(name, setting, value, text)
    if setting.kind == "widths":
        return _widths(name, setting, value, text)
    if setting.kind == "function":
        if value is None or callable(value):
            return _hashable(name, value)
        raise ConfigError(f"{name}: {value!r} is not a function")
    if isinstance(value, str):
        if value in setting.choices or (name == "dataset" and _dataset_name(value)) or (setting.accepts and setting.accepts(value)):
            return value
        hint = " (your own data may be named with letters, digits, _ - and .)" if name == "dataset" else ""
        choices = tuple(ACTIVATIONS) if name == "activation" else setting.choices
        raise ConfigError(f"{name}: {value!r} is not one of: {', '.join(choices)}{hint}")
    if setting.accepts is not None and setting.accepts(value):
        return _hashable(name, value)
    hint = {"cost": "a name or an object with name, output and per_example(z, labels)",
            "optimizer": "a name or a function learning_rate -> optax.GradientTransformation"}.get(name, "a name")
    raise ConfigError(f"{name}: {value!r} is not {hint}")


DEFAULTS = TrainConfig()


# Numbers a compiled program takes as values rather than constants: configurations that differ
# only in them train in one program. The update's numbers ride in each member's optimizer state
# (``optax.inject_hyperparams``); the augmentation's belong to a stream of batches (a group row).
UPDATE_NUMBERS = ("lr", "l2", "dropout", "momentum", "b1", "b2")
AUGMENT_NUMBERS = ("rotation", "scale", "shear", "shift", "elastic_alpha", "elastic_sigma")
# l2 and dropout switched off cost nothing; switched on, their value is traced: off and on are
# two programs, and the key holds this stand-in value for "on".
SWITCHED_ON = {"l2": 1.0, "dropout": 0.5}


def switched_on(config: TrainConfig, given: Iterable[str]) -> TrainConfig:
    """``config`` with ``l2`` and ``dropout`` switched on (``SWITCHED_ON``'s stand-in) where the
    config has them off but ``given`` names them: a value given for them is used, not ignored."""
    given = set(given)
    return config.replace(**{name: on for name, on in SWITCHED_ON.items() if name in given and not getattr(config, name)})


def numbers(config: TrainConfig, names: tuple[str, ...]) -> dict[str, float]:
    """``{name: value}`` of ``config``'s fields ``names`` (``UPDATE_NUMBERS``, ``AUGMENT_NUMBERS``)."""
    return {name: getattr(config, name) for name in names}


def program_key(config: TrainConfig) -> TrainConfig:
    """What decides a compiled epoch program: the config without its seed, epoch count and the
    numbers it takes as values (``UPDATE_NUMBERS``, ``AUGMENT_NUMBERS``; for ``l2`` and
    ``dropout`` only whether they are on). A schedule other than ``constant`` spans the whole
    run, so there the epoch count stays; an optimizer factory that cannot take a traced rate
    (``optimizers.takes_traced_rate``) keeps its rate. Your own cost, optimizer and penalty are
    part of the key as the objects they are, never by name."""
    values = {name: getattr(DEFAULTS, name) for name in UPDATE_NUMBERS + AUGMENT_NUMBERS}
    values.update({name: on for name, on in SWITCHED_ON.items() if getattr(config, name)})
    if not takes_traced_rate(config.optimizer):
        values["lr"] = config.lr
    return config.replace(seed=DEFAULTS.seed, epochs=1 if config.schedule == "constant" else config.epochs, **values)


# --- sweep grids ----------------------------------------------------------------------------


def axis_values(name: str, values: Any, text: bool = False) -> tuple:
    """A sweep axis as a tuple of checked values, duplicates removed.

    A list holds candidate values; anything else is one value. For ``hidden`` each candidate is a
    shape: ``[(16, 16), (32,)]`` is two networks and ``[16, 32]`` is refused as ambiguous.
    """
    if name == "hidden":
        if isinstance(values, (list, tuple)) and values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise ConfigError(
                f"hidden: {list(values)} is ambiguous as a sweep axis; give a list of shapes: "
                f"{[tuple(values)]} for one network, {[(v,) for v in values]} for {len(values)}"
            )
        candidates = list(values) if isinstance(values, list) or (isinstance(values, tuple) and values and not isinstance(values[0], int)) else [values]
    else:
        candidates = list(values) if isinstance(values, (list, tuple)) else [values]
    if not candidates:
        raise ConfigError(f"sweep axis {name} is empty; give at least one value")
    values = tuple(dict.fromkeys(coerce(name, v, text) for v in candidates))
    names = [describe(v) for v in values]
    twice = next((n for n in names if names.count(n) > 1), None)
    if twice is not None:
        raise ConfigError(f"{name}: two different objects on one axis are both named {twice!r}; records and folders "
                          "know a configuration by its names, so give each its own name (def a named function, or "
                          "jd.Cost with another name)")
    return values


@dataclasses.dataclass(frozen=True)
class SweepGrid:
    """The axes of a sweep: config field name -> tuple of values; unnamed fields keep the
    ``TrainConfig`` default. Every combination is one configuration."""

    axes: dict

    def __init__(self, axes: dict | None = None, **more: Any):
        given = {**(axes or {}), **more}
        unknown = sorted(set(given) - set(FIELDS))
        if unknown:
            raise ConfigError(f"unknown sweep axes {unknown}; known axes (the config fields): {', '.join(FIELDS)}")
        object.__setattr__(self, "axes", {name: axis_values(name, given[name]) for name in FIELDS if name in given})

    def configs(self) -> list[TrainConfig]:
        """Every combination as a ``TrainConfig``, in grid order, without duplicates."""
        names = list(self.axes)
        combos = itertools.product(*(self.axes[n] for n in names))
        return list(dict.fromkeys(TrainConfig(**dict(zip(names, combo))) for combo in combos))

    def values(self, name: str) -> tuple:
        """The values of axis ``name`` (the default alone when not swept)."""
        return self.axes.get(name, (getattr(DEFAULTS, name),))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready plain data (the form of a grid file)."""
        return {name: [describe(v) for v in values] for name, values in self.axes.items()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "SweepGrid":
        """A grid from a dict of axes; unknown keys are an error."""
        if not isinstance(values, dict):
            raise ConfigError("a grid must be a table of axes, e.g. lr = [0.3, 3.0]")
        return cls(values)

    def replace(self, **axes: Any) -> "SweepGrid":
        """A copy with these axes set (``None`` values are ignored)."""
        return SweepGrid({**self.axes, **{k: v for k, v in axes.items() if v is not None}})
