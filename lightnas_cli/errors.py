"""User-facing errors.

Anything a user can cause (a bad config, missing data, an existing run name, a malformed
architecture, a corrupt checkpoint) raises a subclass of `LightNASError`. The CLI prints the
message without a traceback and exits with code 2; every other exception is a bug and keeps
its traceback.
"""


class LightNASError(Exception):
    """An error caused by user input; its message says what is wrong and how to fix it."""


class ConfigError(LightNASError):
    """Invalid configuration: unknown key, wrong type, missing value, impossible option."""


class DataError(LightNASError):
    """Data set missing, unreadable, or inconsistent with the config."""


class RunError(LightNASError):
    """Problem with a run folder: exists already, not found, locked, no checkpoint."""


class CheckpointError(LightNASError):
    """A checkpoint is missing or corrupt and no complete one could be used instead."""


class ArchitectureError(LightNASError):
    """An architecture record or string is malformed or does not fit the model."""


class ExportError(LightNASError):
    """An export cannot be made or failed its check (a missing optional package, an operator
    the target format lacks, outputs that disagree with the network)."""


class DiskFullError(RunError):
    """The disk (or quota) filled up while a run was writing; free space, then resume."""


class DivergedError(LightNASError):
    """The training loss became NaN or infinite; the run stopped with its good epochs kept."""
