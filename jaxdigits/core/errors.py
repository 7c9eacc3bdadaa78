"""The project's error types: each carries a one-line message that says what to do."""


class JaxdigitsError(Exception):
    """Base class: a problem the user can fix, reported as one line without a traceback."""

    exit_code = 1


class ConfigError(JaxdigitsError, ValueError):
    """An invalid hyperparameter or flag (learning rate <= 0, bad sizes, ...)."""

    exit_code = 2


class InputError(JaxdigitsError, ValueError):
    """Arrays given to a public function with the wrong shape, dtype or values."""

    exit_code = 2


class DataError(JaxdigitsError):
    """A data file or folder that cannot be read as MNIST-style IDX data."""


class CheckpointError(JaxdigitsError):
    """A checkpoint that is missing, corrupted, unsafe or does not match its architecture."""


class RunFolderError(JaxdigitsError):
    """An output folder that already holds another run."""

    exit_code = 2
