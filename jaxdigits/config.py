"""The training configuration: plain, hashable data, validated before anything compiles."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from jaxdigits.costs import COSTS
from jaxdigits.data import DATASETS
from jaxdigits.errors import ConfigError
from jaxdigits.model import ACTIVATIONS, LESSON_SIZES

OPTIMIZER_NAMES = ("sgd", "momentum", "adam")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run. The defaults reproduce the lesson."""

    sizes: tuple[int, ...] = LESSON_SIZES
    activation: str = "sigmoid"
    cost: str = "quadratic"
    optimizer: str = "sgd"
    learning_rate: float = 3.0
    batch_size: int = 10
    epochs: int = 30
    seed: int = 0
    l2: float = 0.0
    dataset: str = "mnist"

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready plain data."""
        return {**dataclasses.asdict(self), "sizes": list(self.sizes)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        """The inverse of ``to_dict``; unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - names
        if unknown:
            raise ConfigError(f"unknown config keys {sorted(unknown)}; known keys: {sorted(names)}")
        values = dict(values)
        if "sizes" in values:
            values["sizes"] = tuple(int(s) for s in values["sizes"])
        return cls(**values)


def _choice(name: str, value: str, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{name} {value!r} is not one of: {', '.join(choices)}")


def validate_sizes(sizes: tuple[int, ...]) -> None:
    """Layer sizes must start at 784 (pixels), end at 10 (digits), all positive."""
    if len(sizes) < 2 or sizes[0] != 784 or sizes[-1] != 10:
        raise ConfigError(
            f"sizes {','.join(map(str, sizes))} must start at 784 (the pixels) and end at 10 "
            "(the digits), e.g. --sizes 784,16,16,10"
        )
    if any(s < 1 for s in sizes):
        raise ConfigError(f"sizes {','.join(map(str, sizes))}: every layer needs at least 1 neuron")


def validate_config(config: TrainConfig, num_train: int | None = None) -> TrainConfig:
    """Return ``config`` unchanged if valid, else raise ``ConfigError`` naming the bad field.

    ``num_train``, when known, bounds the batch size.
    """
    validate_sizes(config.sizes)
    _choice("activation", config.activation, tuple(ACTIVATIONS))
    _choice("cost", config.cost, tuple(COSTS))
    _choice("optimizer", config.optimizer, OPTIMIZER_NAMES)
    _choice("dataset", config.dataset, DATASETS)
    if not (math.isfinite(config.learning_rate) and config.learning_rate > 0):
        raise ConfigError(f"learning rate must be > 0 and finite, got {config.learning_rate}")
    if config.batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {config.batch_size}")
    if num_train is not None and config.batch_size > num_train:
        raise ConfigError(
            f"batch size {config.batch_size} is larger than the {num_train} training images"
        )
    if config.epochs < 1:
        raise ConfigError(f"epochs must be at least 1, got {config.epochs}")
    if not (math.isfinite(config.l2) and config.l2 >= 0):
        raise ConfigError(f"l2 must be >= 0, got {config.l2}")
    if config.seed < 0:
        raise ConfigError(f"seed must be >= 0, got {config.seed}")
    return config
