"""Errors that the command line turns into one clear line and exit code 2.

Anything raised as a subclass of :class:`EsvaeError` is a problem with the user's input or
environment (a wrong name, a missing file), not a bug: the CLI prints ``esvae: error: <message>``
and exits with status 2, without a traceback.
"""


class EsvaeError(Exception):
    """Base class of user-facing errors."""


class ConfigError(EsvaeError, ValueError):
    """An unknown name or an out-of-range configuration value."""


class DatasetNotFoundError(EsvaeError, FileNotFoundError):
    """A dataset's files are not where they are expected."""


class CheckpointError(EsvaeError):
    """A checkpoint that cannot be read or does not fit the requested model."""


class TrainingDivergedError(EsvaeError):
    """The loss became NaN or infinite; the message names the step, the loss terms and the last checkpoint."""


class MetricUnavailableError(EsvaeError):
    """A metric that cannot be computed honestly here (e.g. IS without the Inception classifier head);
    the message says what to supply."""


class TrainingInterrupted(EsvaeError):
    """SIGTERM or SIGINT reached training: the state was saved and the same command continues it.
    Exits like the signal would (128 + its number), so schedulers see a killed job."""

    def __init__(self, message: str, signal_number: int):
        super().__init__(message)
        self.exit_code = 128 + signal_number
