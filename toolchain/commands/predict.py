"""`medprune predict IMAGE_OR_FOLDER... --checkpoint X | --package DIR`: class probabilities, as JSON or CSV.

With ``--checkpoint`` every file is decoded exactly as training decoded it (``folder.read_image``: the same load-time
resize, grey detection and DICOM display pipeline) and goes through the checkpoint's stored
``Preprocess``. A file far outside what the model was trained on (size, channels, brightness; see
``data.input_profile``) still gets a prediction, with a warning on stderr and in the output.
With ``--package`` the bedside package is verified and its model runs through the manifest's
preprocessing (``export.package_predict``), i.e. what the package's own predict.py computes.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import typer

FORMATS = ("json", "csv")


def collect_files(inputs: list[Path]) -> list[Path]:
    """Image files named or found (recursively, hidden ones skipped) under ``inputs``, in order, once each."""
    from ..data.folder import IMAGE_EXTS
    from ..errors import DataError

    files: list[Path] = []
    for item in inputs:
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS
                           and not any(part.startswith(".") for part in p.relative_to(item).parts))
            if not found:
                raise DataError(f"no image files ({', '.join(sorted(IMAGE_EXTS))}) under {item}")
            files += found
        elif item.is_file():
            if item.suffix.lower() not in IMAGE_EXTS:
                raise DataError(f"{item} is not an image file medprune reads ({', '.join(sorted(IMAGE_EXTS))})")
            files.append(item)
        else:
            raise DataError(f"input not found: {item}")
    return list(dict.fromkeys(files))


def predict_files(model, meta: dict, files: list[Path], *, batch_size: int = 32, device: str = "cpu") -> list[dict]:
    """One record per file: predicted class, its probability, all probabilities and input warnings."""
    import numpy as np
    import torch

    from ..data import Preprocess
    from ..data.folder import read_image
    from ..data.input_profile import file_size, input_warnings
    from ..errors import CheckpointError

    if not meta.get("preprocess"):
        raise CheckpointError("checkpoint records no preprocessing (meta.preprocess); re-import or retrain it")
    preprocess = Preprocess.from_dict(meta["preprocess"])
    load_size = (meta.get("train_config") or meta.get("data_config") or {}).get("load_size")
    profile = meta.get("input_profile")
    names = list(meta.get("class_names") or [f"class_{i}" for i in range(int(meta["num_classes"]))])
    records: list[dict] = []
    model.eval()
    for start in range(0, len(files), batch_size):
        chunk = files[start:start + batch_size]
        images = [read_image(f, load_size) for f in chunk]
        # sizes may differ between files; Preprocess resizes each to the model's input
        x = torch.cat([preprocess(img[None, ..., None] if img.ndim == 2 else img[None]) for img in images]).to(device)
        with torch.no_grad():
            probs = torch.softmax(model(x).float(), dim=1).cpu().numpy()
        for f, img, p in zip(chunk, images, probs, strict=True):
            k = int(np.argmax(p))
            records.append({"file": str(f), "prediction": names[k], "probability": float(p[k]),
                            "probabilities": {n: float(v) for n, v in zip(names, p, strict=True)},
                            "warnings": input_warnings(profile, img, file_size(f))})
    return records


def to_csv(records: list[dict], names: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["file", "prediction", "probability", *[f"p_{n}" for n in names], "warnings"])
    for r in records:
        writer.writerow([r["file"], r["prediction"], f"{r['probability']:.6f}",
                         *[f"{r['probabilities'][n]:.6f}" for n in names], "; ".join(r["warnings"])])
    return buf.getvalue()


def register(app: typer.Typer) -> None:
    @app.command("predict")
    def predict_cmd(
        inputs: list[Path] = typer.Argument(..., help="image files (PNG, JPEG, TIFF, DICOM, ...) or folders"),
        checkpoint: Path = typer.Option(None, "--checkpoint", "-c", help="model .safetensors (with its .json)"),
        package: Path = typer.Option(None, "--package", help="a bedside package (folder or .tar.gz) instead"),
        runtime: str = typer.Option(None, "--runtime", help="with --package: onnxruntime or openvino"),
        trusted_key: Path = typer.Option(None, "--trusted-key", help="with --package: require its signature"),
        out: Path = typer.Option(None, "--out", "-o", help="write the predictions here (.json or .csv)"),
        fmt: str = typer.Option(None, "--format", help="json or csv (default: from --out, else json)"),
        batch_size: int = typer.Option(32, "--batch-size"),
        device: str = typer.Option("auto", "--device", help="auto, cpu or cuda"),
    ) -> None:
        """Predict the class of each image with a checkpoint or a bedside package (same preprocessing)."""
        import sys

        from ..atomic import atomic_file
        from ..errors import ConfigError
        from ..models import load_checkpoint, recorded_sha256, resolve_checkpoint
        from ..settings import resolve_device

        fmt = (fmt or (out.suffix.lstrip(".").lower() if out is not None else "json")).lower()
        if fmt not in FORMATS:
            raise ConfigError(f"output format must be json or csv (from --format or the --out suffix), got {fmt!r}")
        if batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
        if (checkpoint is None) == (package is None):
            raise ConfigError("give exactly one of --checkpoint and --package")
        if package is None and (runtime or trusted_key):
            raise ConfigError("--runtime and --trusted-key apply to --package only")
        files = collect_files(inputs)
        if package is not None:
            from export.package_predict import predict_with_package

            records, source = predict_with_package(package, files, runtime, trusted_key)
        else:
            dev = resolve_device(device)
            weights = resolve_checkpoint(checkpoint)
            model, meta = load_checkpoint(weights, device=dev)
            records = predict_files(model, meta, files, batch_size=batch_size, device=dev)
            source = {"checkpoint": str(weights), "checkpoint_sha256": recorded_sha256(weights),
                      "arch": meta.get("arch"), "class_names": list(meta.get("class_names") or
                                                                    records[0]["probabilities"]),
                      "preprocess": meta.get("preprocess")}
        names = source["class_names"]
        for r in records:
            for w in r["warnings"]:
                print(f"medprune: warning: {r['file']}: {w}", file=sys.stderr)
        if fmt == "csv":
            text = to_csv(records, names)
        else:
            text = json.dumps({**source, "predictions": records}, indent=1) + "\n"
        if out is None:
            sys.stdout.write(text)
            return
        with atomic_file(out, "w") as fh:
            fh.write(text)
        print(f"predictions: {out} ({len(records)} files, "
              f"{sum(bool(r['warnings']) for r in records)} with input warnings)")
