"""User-facing errors.

Anything the user can fix (bad path, bad flag, corrupt file) raises a ``MedpruneError``;
the CLI prints its message as one line and exits non-zero, without a traceback.
"""


class MedpruneError(Exception):
    """A problem with the user's input that they can fix. ``exit_code`` is the CLI exit status."""

    exit_code = 2


class DataError(MedpruneError):
    pass


class ModelError(MedpruneError):
    pass


class CheckpointError(MedpruneError):
    pass


class ConfigError(MedpruneError):
    pass


class OutputError(MedpruneError):
    """An output medprune cannot write: read-only, full, or a file where a folder belongs."""


class GateError(MedpruneError):
    """A clinical or parity gate refused the result (accuracy, sensitivity, export parity)."""

    exit_code = 3
