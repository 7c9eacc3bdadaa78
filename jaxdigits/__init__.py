"""jaxdigits: the lesson's 784-16-16-10 digit-reading network as pure JAX functions.

    import jax, jaxdigits as jd
    data = jd.load_mnist("path/to/mnist")
    network = jd.init_mlp(jax.random.PRNGKey(0))
    grads = jax.grad(jd.quadratic_cost)(network, data.train_images[:10], data.train_labels[:10])

The modules: ``model`` (the network), ``costs``, ``optimizers``, ``config`` (the run schema and
sweep grids), ``data``, ``training`` (step, epoch, ``train``), ``sweeps``, ``records`` (one
record per run), ``reports`` (what a network gets wrong, what a sweep found), ``checkpoint``,
``sweep_folder``, ``files``, ``cli``.
"""

from jaxdigits.checkpoint import load_params, save_params
from jaxdigits.config import FIELDS, SweepGrid, TrainConfig, load_grid, program_key
from jaxdigits.costs import COSTS, Cost, CrossEntropyCost, QuadraticCost, cross_entropy_cost, l2_penalty, make_objective, quadratic_cost
from jaxdigits.data import Dataset, frame_digit, load_digit_image, load_mnist, read_idx
from jaxdigits.errors import CheckpointError, ConfigError, DataError, InputError, JaxdigitsError, RunFolderError
from jaxdigits.model import LESSON_SIZES, Network, accuracy, forward, init_mlp, layer_activations, predict
from jaxdigits.optimizers import OPTIMIZERS, make_optimizer
from jaxdigits.records import aggregate, format_table, run_record, run_status
from jaxdigits.reports import report, sweep_report
from jaxdigits.sweep_folder import ResultsWarning, read_results
from jaxdigits.sweeps import SweepResult, sweep, use_cpu_cores
from jaxdigits.training import (StalledWarning, TrainResult, TrainState, batch_order, evaluate, init_state, make_epoch,
                                make_guarded_epoch, make_step, run_keys, train)

__all__ = [
    "COSTS", "CheckpointError", "ConfigError", "Cost", "CrossEntropyCost", "DataError", "Dataset", "FIELDS",
    "InputError", "JaxdigitsError", "LESSON_SIZES", "Network", "OPTIMIZERS", "QuadraticCost", "ResultsWarning",
    "RunFolderError", "StalledWarning", "SweepGrid", "SweepResult", "TrainConfig", "TrainResult", "TrainState",
    "accuracy", "aggregate", "batch_order", "cross_entropy_cost", "evaluate", "format_table", "forward",
    "frame_digit", "init_mlp", "init_state", "l2_penalty", "layer_activations", "load_digit_image", "load_grid",
    "load_mnist", "load_params", "make_epoch", "make_guarded_epoch", "make_objective", "make_optimizer",
    "make_step", "predict", "program_key", "quadratic_cost", "read_idx", "read_results", "report", "run_keys", "run_record",
    "run_status", "save_params", "sweep", "sweep_report", "train", "use_cpu_cores",
]
