"""Turn a dataset spec (a MedMNIST name, an .npz path or an image folder) into a file or folder."""

from __future__ import annotations

import re
from pathlib import Path

from .. import settings
from ..errors import DataError

# MedMNIST's official label names (medmnist.INFO[...]["label"]), made identifier-like.
MEDMNIST_LABELS: dict[str, list[str]] = {
    "pneumoniamnist": ["normal", "pneumonia"],
    "breastmnist": ["malignant", "normal_benign"],
    "octmnist": ["choroidal_neovascularization", "diabetic_macular_edema", "drusen", "normal"],
    "bloodmnist": ["basophil", "eosinophil", "erythroblast", "immature_granulocytes", "lymphocyte",
                   "monocyte", "neutrophil", "platelet"],
    "dermamnist": ["actinic_keratoses_and_intraepithelial_carcinoma", "basal_cell_carcinoma",
                   "benign_keratosis_like_lesions", "dermatofibroma", "melanoma", "melanocytic_nevi",
                   "vascular_lesions"],
    "pathmnist": ["adipose", "background", "debris", "lymphocytes", "mucus", "smooth_muscle",
                  "normal_colon_mucosa", "cancer_associated_stroma", "colorectal_adenocarcinoma_epithelium"],
}
_ORGAN = ["bladder", "femur_left", "femur_right", "heart", "kidney_left", "kidney_right", "liver",
          "lung_left", "lung_right", "pancreas", "spleen"]
MEDMNIST_LABELS.update({f"organ{axis}mnist": _ORGAN for axis in "acs"})

# MedMNIST's Python class for each known file stem, for the "how to obtain it" hint.
_MEDMNIST_CLASS = {
    "pneumoniamnist": "PneumoniaMNIST", "breastmnist": "BreastMNIST", "octmnist": "OCTMNIST",
    "bloodmnist": "BloodMNIST", "dermamnist": "DermaMNIST", "pathmnist": "PathMNIST",
    "organamnist": "OrganAMNIST", "organcmnist": "OrganCMNIST", "organsmnist": "OrganSMNIST",
    "chestmnist": "ChestMNIST", "retinamnist": "RetinaMNIST", "tissuemnist": "TissueMNIST",
}
_SIZED = re.compile(r"^(?P<base>[a-z]+mnist)(?:_(?P<size>\d+))?$")


def medmnist_base(name: str) -> tuple[str, int | None] | None:
    """``breastmnist_64`` → (``breastmnist``, 64); None when the name is not MedMNIST-shaped."""
    m = _SIZED.match(name.lower())
    if not m:
        return None
    return m.group("base"), int(m.group("size")) if m.group("size") else None


def medmnist_class_names(name: str, num_classes: int) -> list[str]:
    parsed = medmnist_base(name)
    names = MEDMNIST_LABELS.get(parsed[0]) if parsed else None
    if names and len(names) == num_classes:
        return list(names)
    return [f"class_{i}" for i in range(num_classes)]


def _obtain_hint(name: str) -> str:
    parsed = medmnist_base(name)
    if not parsed or parsed[0] not in _MEDMNIST_CLASS:
        return "pass a path to an .npz file or an image folder, or set MEDPRUNE_DATA"
    base, size = parsed
    size_arg = f", size={size}" if size else ""
    return (
        "obtain it on a machine with internet: pip install medmnist; python -c \"import medmnist; "
        f"medmnist.{_MEDMNIST_CLASS[base]}(split='train', download=True, root='<MEDPRUNE_DATA>/medmnist'"
        f"{size_arg})\" and copy {name}.npz into MEDPRUNE_DATA/medmnist"
    )


def locate(spec: str | Path, data_dir: str | Path | None = None) -> Path:
    """An existing .npz file or folder for ``spec``; a one-line DataError saying where it looked if none."""
    raw = str(spec).strip()
    if not raw:
        raise DataError("empty dataset name: give a MedMNIST name, an .npz path or an image folder")
    path = Path(raw).expanduser()
    looks_like_path = path.suffix.lower() == ".npz" or "/" in raw or raw.startswith(".")
    if path.exists():
        return path
    if looks_like_path and path.is_absolute():
        raise DataError(f"dataset not found: {path} does not exist")

    root = Path(data_dir).expanduser() if data_dir is not None else settings.data_dir()
    if root is not None and not root.is_dir():
        raise DataError(f"data directory {root} does not exist (from {'--data-dir' if data_dir else 'MEDPRUNE_DATA'})")
    stem = path.name[: -len(".npz")] if path.suffix.lower() == ".npz" else path.name
    candidates: list[Path] = []
    if root is not None:
        if looks_like_path:
            candidates.append(root / raw)
        for base in (root, root / "medmnist"):
            candidates += [base / f"{stem}.npz", base / f"{stem.lower()}.npz", base / stem]
    for cand in dict.fromkeys(candidates):
        if cand.exists():
            return cand
    where = ", ".join(str(c) for c in dict.fromkeys(candidates)) if candidates else str(path)
    unset = "" if root is not None else " (MEDPRUNE_DATA is unset)"
    raise DataError(f"dataset {raw!r} not found{unset}; looked in: {where}; {_obtain_hint(stem)}")
