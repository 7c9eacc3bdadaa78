"""jaxdigits: the lesson's 784-16-16-10 digit-reading network as pure JAX functions.

    import jax, jaxdigits
    data = jaxdigits.load_mnist("path/to/mnist")
    params = jaxdigits.init_mlp(jax.random.PRNGKey(0))
    grads = jax.grad(jaxdigits.quadratic_cost)(params, data.train_images[:10], data.train_labels[:10])
"""

from jaxdigits.checkpoint import load_params, save_params
from jaxdigits.config import TrainConfig, validate_config
from jaxdigits.costs import COSTS, CrossEntropyCost, QuadraticCost, cross_entropy_cost, mean_cost, quadratic_cost
from jaxdigits.data import Dataset, load_digit_image, load_mnist, read_idx
from jaxdigits.errors import CheckpointError, ConfigError, DataError, JaxdigitsError, RunFolderError
from jaxdigits.model import LESSON_SIZES, accuracy, forward, init_mlp, predict
from jaxdigits.sweep import SweepGrid, SweepResult, load_grid, sweep
from jaxdigits.sweep_results import ResultsWarning, aggregate, format_table, read_results
from jaxdigits.train import TrainResult, TrainState, init_state, make_epoch, make_optimizer, make_step, run_keys, train

__all__ = [
    "COSTS", "CheckpointError", "ConfigError", "CrossEntropyCost", "DataError", "Dataset",
    "JaxdigitsError", "LESSON_SIZES", "QuadraticCost", "RunFolderError", "TrainConfig",
    "TrainResult", "TrainState", "accuracy", "cross_entropy_cost", "forward", "init_mlp",
    "init_state", "load_digit_image", "load_mnist", "load_params", "make_epoch", "make_optimizer",
    "make_step", "mean_cost", "predict", "quadratic_cost", "read_idx", "run_keys", "save_params", "train",
    "validate_config",
    "ResultsWarning", "SweepGrid", "SweepResult", "aggregate", "format_table", "load_grid", "read_results", "sweep",
]
