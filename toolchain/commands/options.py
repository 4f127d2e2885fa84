"""Options shared by the commands that open a dataset (train, prune, evaluate, export, deploy).

One definition each, so the flag, its help text and its default are the same everywhere:
``allow_missing_class: bool = allow_missing_class_option()``.
"""

from __future__ import annotations

import typer

from .choices import constant

ALLOW_FLAG = constant("toolchain.data.labels", "ALLOW_FLAG")  # read, not imported: --help stays light


def ordinal_option():
    return typer.Option(False, "--ordinal", help="the classes are ordered grades (in label order): also report "
                        "quadratic-weighted kappa and mean absolute grade error [default: as the model was trained]")


def allow_missing_class_option():
    return typer.Option(False, ALLOW_FLAG, help="keep a class whose folder is empty (or that has no train "
                        "images) instead of stopping; a val/test label train never had is still an error")
