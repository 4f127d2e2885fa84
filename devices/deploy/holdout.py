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
    """A dataset's ``splits`` mapping whose ``"test"`` entry raises outside :func:`report_phase`.

    Split *names* stay readable (``"test" in splits``, ``len``, ``keys()``); every way to the test
    *data* goes through :meth:`_check`: item access, ``get``, ``values``/``items``, ``pop``/``setdefault``,
    and the copies ``dict(splits)``, ``{**splits}``, ``splits.copy()`` and ``splits | other``.
    """

    def _check(self, key) -> None:
        if key == "test" and not report_open():
            raise SealedTestSplitError("deploy read the test split before its final report phase; every choice "
                                  "must be made on val")

    def _check_all(self) -> None:
        if "test" in self:
            self._check("test")

    def __getitem__(self, key):
        self._check(key)
        return super().__getitem__(key)

    def __iter__(self):
        # defined in Python on purpose: dict(x) and {**x} copy a dict subclass with C's own iterator without
        # calling __getitem__; with this method they go through keys() and __getitem__, i.e. through the seal
        return super().__iter__()

    def get(self, key, default=None):
        self._check(key)
        return super().get(key, default)

    def values(self):
        self._check_all()
        return super().values()

    def items(self):
        self._check_all()
        return super().items()

    def pop(self, key, *default):
        self._check(key)
        return super().pop(key, *default)

    def popitem(self):
        self._check_all()
        return super().popitem()

    def setdefault(self, key, default=None):
        self._check(key)
        return super().setdefault(key, default)

    def copy(self):
        """A sealed copy (dict.copy would hand out a plain, unsealed dict)."""
        return type(self)(dict.items(self))

    def __or__(self, other):
        self._check_all()
        return super().__or__(other)

    def __ror__(self, other):
        self._check_all()
        return super().__ror__(other)


def seal(ds):
    """``ds`` with its test split sealed (in place: the dataset object is deploy's own)."""
    if not isinstance(ds.splits, SealedSplits):  # sealing twice is a no-op (and must not read test)
        ds.splits = SealedSplits(dict.items(ds.splits))
    return ds
