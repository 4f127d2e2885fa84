"""The test split is sealed until the final report phase.

Every choice deploy makes (ratio, temperature, what passes the lossless rule) is made on val; the test
split is read once, at the end, to report and to judge the clinical gates. :func:`seal` makes that a
property of the code rather than a habit: the deploy's dataset refuses to hand out its test split
unless :func:`report_phase` is active, so a stage that reads test too early fails loudly.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

_OPEN = contextvars.ContextVar("medprune_deploy_test_open", default=False)


class SealedTestSplitError(RuntimeError):
    """A deploy stage read the test split before the final report phase (a protocol bug)."""


def report_open() -> bool:
    """True inside :func:`report_phase`."""
    return _OPEN.get()


@contextlib.contextmanager
def report_phase() -> Iterator[None]:
    """The final phase: reporting (metrics, gates, fidelity, bench, sample images) may read test."""
    token = _OPEN.set(True)
    try:
        yield
    finally:
        _OPEN.reset(token)


class SealedSplits(dict):
    """A dataset's ``splits`` mapping whose ``"test"`` entry raises outside :func:`report_phase`."""

    def _check(self, key) -> None:
        if key == "test" and not report_open():
            raise SealedTestSplitError("deploy read the test split before its final report phase; every choice "
                                  "must be made on val")

    def __getitem__(self, key):
        self._check(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self._check(key)
        return super().get(key, default)

    def values(self):
        if "test" in self:
            self._check("test")
        return super().values()

    def items(self):
        if "test" in self:
            self._check("test")
        return super().items()


def seal(ds):
    """``ds`` with its test split sealed (in place: the dataset object is deploy's own)."""
    ds.splits = SealedSplits(ds.splits)
    return ds
