"""What the model card says about the data: the dataset's own description, never wording written for
another dataset.

In order: ``--data-description FILE``; a description beside the data (``DESCRIPTION.md`` inside an image
folder, ``<stem>.DESCRIPTION.md`` beside an ``.npz`` file); for the public MedMNIST sets medprune knows by
name, the description shipped in ``templates/dataset_<name>.md``; otherwise the card says that no
description was given, so the population, sites and labelling are unknown to the reader.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from toolchain.errors import ConfigError

FOLDER_FILE = "DESCRIPTION.md"
FILE_SUFFIX = ".DESCRIPTION.md"
MAX_BYTES = 20_000  # a description, not a paper: longer files are refused (they would swamp the card)
SHIPPED = Path(__file__).with_name("templates")
NONE_GIVEN = ("No description of this dataset was given (add `DESCRIPTION.md` inside the image folder, "
              "`<name>.DESCRIPTION.md` beside an .npz file, or pass `--data-description FILE`): its "
              "population, sites, scanners and labelling are not documented here, so nothing is known about "
              "whom the model fits.")


def read_description(path: str | Path) -> str:
    """The text of a description file: UTF-8, non-empty, at most MAX_BYTES; ConfigError (exit 2) otherwise."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"data description {path} unreadable: {exc.strerror or exc}") from None
    if len(raw) > MAX_BYTES:
        raise ConfigError(f"data description {path} is {len(raw)} bytes; at most {MAX_BYTES} fit a model card")
    try:
        text = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ConfigError(f"data description {path} is not UTF-8 text") from None
    if not text:
        raise ConfigError(f"data description {path} is empty")
    return text


def find_description(source: str | Path, name: str) -> Path | None:
    """The description file beside the data at ``source`` (folder or file), else the one medprune ships for
    the MedMNIST set ``name``; None when there is neither."""
    from toolchain.data.locate import medmnist_base

    source = Path(source)
    beside = source / FOLDER_FILE if source.is_dir() else source.with_name(source.stem + FILE_SUFFIX)
    if beside.is_file():
        return beside
    parsed = medmnist_base(name)
    shipped = SHIPPED / f"dataset_{parsed[0]}.md" if parsed and source.suffix.lower() == ".npz" else None
    return shipped if shipped is not None and shipped.is_file() else None


def dataset_description(ds, explicit: str | Path | None = None) -> dict:
    """``{"text", "source", "sha256"}`` for the card and manifest (source None: no description given)."""
    path = Path(explicit) if explicit else find_description(ds.source, ds.name)
    if path is None:
        return {"text": NONE_GIVEN, "source": None, "sha256": None}
    text = read_description(path)
    where = ("--data-description" if explicit else
             f"medprune's description of {ds.name}" if path.parent == SHIPPED else f"beside the data: {path.name}")
    return {"text": text, "source": where, "sha256": hashlib.sha256(text.encode()).hexdigest()}
