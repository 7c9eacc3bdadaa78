"""jaxdigits: the lesson's 784-16-16-10 digit-reading network as pure JAX functions.

    import jax, jaxdigits as jd
    data = jd.load_mnist("path/to/mnist")
    network = jd.init_mlp(jax.random.PRNGKey(0))
    grads = jax.grad(jd.quadratic_cost)(network, data.train_images[:10], data.train_labels[:10])

Two layers. ``jaxdigits.core`` is pure (jax, optax, numpy): ``model`` (the network), ``costs``,
``optimizers``, ``transforms``, ``config`` (the run schema and sweep grids), ``dataset``,
``epoch`` (step, epoch, ``make_train``), ``group`` (configurations under ``vmap``), ``metrics``.
The application shell calls into it: ``driver`` (the one training loop), ``training``
(``train``), ``sweeps`` (``sweep``), ``devices``, ``run_folder``, ``sweep_folder``,
``checkpoint``, ``records``, ``data`` (MNIST files), ``images`` (PNG digits), ``loader``,
``reports``, ``serve``, ``cli``.
"""

import importlib
from typing import Any

# Each public name and the module that defines it. They are imported when first used, so that
# importing the pure core (``jaxdigits.core.epoch``, say) loads the core alone.
_PUBLIC = {
    **dict.fromkeys(('load_params', 'save_params'), "jaxdigits.checkpoint"),
    **dict.fromkeys(('FIELDS', 'SweepGrid', 'TrainConfig', 'program_key'), "jaxdigits.core.config"),
    **dict.fromkeys(('COSTS', 'Cost', 'CrossEntropyCost', 'QuadraticCost', 'cross_entropy_cost', 'l2_penalty', 'make_objective', 'quadratic_cost'), "jaxdigits.core.costs"),
    **dict.fromkeys(('DataWarning', 'Dataset'), "jaxdigits.core.dataset"),
    **dict.fromkeys(('clear_programs',), "jaxdigits.core.programs"),
    **dict.fromkeys(('TrainState', 'batch_order', 'init_state', 'make_epoch', 'make_guarded_epoch', 'make_step', 'make_train', 'run_keys'), "jaxdigits.core.epoch"),
    **dict.fromkeys(('CheckpointError', 'ConfigError', 'DataError', 'InputError', 'JaxdigitsError', 'RunFolderError'), "jaxdigits.core.errors"),
    **dict.fromkeys(('evaluate', 'run_status'), "jaxdigits.core.metrics"),
    **dict.fromkeys(('LESSON_SIZES', 'Network', 'accuracy', 'forward', 'init_mlp', 'layer_activations', 'predict', 'register_activation'), "jaxdigits.core.model"),
    **dict.fromkeys(('OPTIMIZERS', 'make_optimizer'), "jaxdigits.core.optimizers"),
    **dict.fromkeys(('load_mnist', 'read_idx'), "jaxdigits.data"),
    **dict.fromkeys(('DeviceWarning', 'use_cpu_cores'), "jaxdigits.devices"),
    **dict.fromkeys(('frame_digit', 'load_digit_image'), "jaxdigits.images"),
    **dict.fromkeys(('load_run',), "jaxdigits.loader"),
    **dict.fromkeys(('RecordError', 'aggregate', 'format_table', 'run_record'), "jaxdigits.records"),
    **dict.fromkeys(('report', 'sweep_report'), "jaxdigits.reports"),
    **dict.fromkeys(('ResultsWarning', 'read_results'), "jaxdigits.sweep_folder"),
    **dict.fromkeys(('SweepResult', 'load_grid', 'sweep'), "jaxdigits.sweeps"),
    **dict.fromkeys(('StalledWarning', 'TrainResult', 'train'), "jaxdigits.training"),
    **dict.fromkeys(('SearchResult', 'search'), "jaxdigits.search"),
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'jaxdigits' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
