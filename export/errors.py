"""Errors of the export stage (user-fixable, so they print as one line in the CLI)."""

from toolchain.errors import MedpruneError


class ExportError(MedpruneError):
    """The model could not be turned into the requested format/precision (not a parity failure:
    that is a ``toolchain.errors.GateError``)."""
