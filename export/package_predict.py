"""`medprune predict --package DIR|X.tar.gz`: the package's verified model on image files.

The package is verified first as ``medprune verify-package`` does (every checksum, no unlisted file,
predict.py equal to this medprune's template, the signature with ``trusted_key``, the sample smoke
test). Images then go through the manifest's preprocessing with this toolchain's own copy of the
predict.py template (the package's code is never run), so the result is what ``python3 predict.py``
prints on the device, input warnings included: packages whose manifest records the training images'
``input_profile`` warn as ``medprune predict -c`` does (the same ``input_warnings``).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from .package_archive import PackageError, safe_extract
from .package_verify import image_input_template, predict_template, verify_package


def predict_with_package(package: str | Path, files: list[Path], runtime: str | None = None,
                         trusted_key: str | Path | None = None) -> tuple[list[dict], dict]:
    """``(one record per file, package facts)``; records as ``toolchain.commands.predict.predict_files``."""
    package = Path(package)
    if not package.exists():
        raise PackageError(f"package not found: {package}")
    tpl = predict_template()
    with tempfile.TemporaryDirectory(prefix="medprune-predict-") as tmp:
        root = safe_extract(package, Path(tmp)) if package.is_file() else package
        report = verify_package(root, runtime, trusted_key)
        try:
            manifest = tpl.load_manifest(root)
            runner = tpl.Runner(manifest, runtime, root=root)
            results = [tpl.classify(manifest, runner, f, image_input_template()) for f in files]
        except tpl.PackageError as exc:
            raise PackageError(str(exc)) from None
    names = list(manifest["class_names"])
    records = []
    for f, (p, w) in zip(files, results, strict=True):
        k = int(p.argmax())
        records.append({"file": str(f), "prediction": names[k], "probability": float(p[k]),
                        "probabilities": {n: float(v) for n, v in zip(names, p, strict=True)}, "warnings": w})
    facts = {"package": str(package), "name": manifest["name"], "runtime": report["runtime"],
             "signature": report["signature"], "class_names": names, "preprocess": manifest["preprocess"]}
    return records, facts

