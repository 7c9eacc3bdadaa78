"""Compiled programs, cached by what they compute.

A program is keyed by its builder, ``config.program_key`` (your own cost, optimizer and penalty
as the objects they are, never by name) and its arguments' shapes, dtypes and shardings, so runs
that differ only in their numbers (seed, epochs, rate, l2, ...) share one compilation and a redefined cost
gets its own.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxdigits.core.config import TrainConfig, program_key
from jaxdigits.core.epoch import _init_program
from jaxdigits.core.group import exact_group_epoch
from jaxdigits.core.optimizers import takes_traced_rate


def compiled(build: Callable[[TrainConfig], Callable], config: TrainConfig, *args, **jit_options) -> Callable:
    """``jax.jit(build(config))`` compiled ahead of time for ``args``' shapes, dtypes and shardings.

    Compiled once per process and program: the key is ``build``, ``program_key(config)`` (your
    own cost, optimizer and penalty as the objects they are) and the arguments' specs, so runs
    that differ only in their numbers (seed, epochs, rate, l2, ...) reuse it, and a redefined cost does not.
    """
    leaves, treedef = jax.tree_util.tree_flatten(args)
    specs = tuple(
        jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x), weak_type=getattr(x, "weak_type", False),
                             sharding=getattr(x, "sharding", None) if isinstance(x, jax.Array) else None)
        for x in leaves
    )
    return _compile(build, program_key(config), treedef, specs, tuple(sorted(jit_options.items())))


@functools.lru_cache(maxsize=64)
def _compile(build, program: TrainConfig, treedef, specs: tuple, jit_options: tuple):
    return _jitted(build, program, jit_options).lower(*jax.tree_util.tree_unflatten(treedef, specs)).compile()


def jitted(build: Callable[[TrainConfig], Callable], config: TrainConfig, **jit_options) -> Callable:
    """``jax.jit(build(config))``, one per program (the same key as ``compiled``); it compiles
    for each new argument shape, as ``jax.jit`` does (evaluation chunks of several sizes)."""
    return _jitted(build, program_key(config), tuple(sorted(jit_options.items())))


@functools.lru_cache(maxsize=64)
def _jitted(build, program: TrainConfig, jit_options: tuple):
    return jax.jit(build(program), **dict(jit_options))


def clear_programs() -> None:
    """Forget every compiled program (and JAX's own caches), so that the next run traces your
    cost, penalty and optimizer again. A compiled program keeps the values a piece read from a
    global or a mutable attribute when it was traced, for the rest of the process: call this
    after changing such a value, or better, make the value a config number or define the piece
    anew (a new object gets a program of its own)."""
    for cache in (_compile, _jitted, exact_group_epoch, takes_traced_rate, _init_program):
        cache.cache_clear()
    jax.clear_caches()
