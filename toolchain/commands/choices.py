"""Options that take a fixed set, read from the registries that define the set (never copied).

Each is a ``Literal`` type: typer lists the values in ``--help`` (``<lrp|dlb|…>``) and refuses any other
with a one-line error, so a criterion registered tomorrow appears in ``medprune prune --help`` by itself.

    criterion: Criterion = typer.Option("lrp", "--criterion", help="importance criterion")
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

from ..data.dataset import SPLITS
from ..importance import available
from ..masking import SCOPES
from ..sampling import STRATEGIES
from ..train import SELECT_METRICS


def one_of(values: Iterable[str]) -> Any:
    """``Literal[v1, v2, …]`` for a CLI option; the registry must not be empty."""
    values = tuple(values)
    if not values:
        raise ValueError("a choice option needs at least one value")
    return Literal[values]  # type: ignore[valid-type]  (built from the registry at run time)


Criterion = one_of(available())
Sampling = one_of(STRATEGIES)
Scope = one_of(SCOPES)
Split = one_of(SPLITS)
SelectMetric = one_of(SELECT_METRICS)
