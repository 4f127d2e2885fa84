"""Nothing medprune ships unpickles: a repository scan, and a hostile ``.pt`` handed to ``medprune bench``.

The scan reads every non-test ``.py`` under the shipped packages with ``ast`` (so comments and strings
do not count, and ``from pickle import loads as l`` does) and fails on any call that can unpickle:
``torch.load`` without ``weights_only=True``, ``pickle``/``dill``/``joblib`` loads, ``pickle.Unpickler``
and ``np.load`` with ``allow_pickle`` anything but False.
"""

from __future__ import annotations

import ast
import pickle
from pathlib import Path

import pytest

from toolchain.cli import main

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ("toolchain", "export", "benchmarks", "devices")
ALWAYS_BANNED = {"pickle.load", "pickle.loads", "pickle.Unpickler", "_pickle.load", "_pickle.loads",
                 "cPickle.load", "cPickle.loads", "dill.load", "dill.loads", "joblib.load",
                 "pandas.read_pickle", "shelve.open"}


def _aliases(tree: ast.AST) -> dict[str, str]:
    """Local name -> dotted origin for every import in the file."""
    out: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                out[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                out[a.asname or a.name] = f"{node.module}.{a.name}"
    return out


def _dotted(func: ast.AST, aliases: dict[str, str]) -> str | None:
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if not isinstance(func, ast.Name):
        return None
    parts.append(aliases.get(func.id, func.id))
    return ".".join(reversed(parts))


def _kw_is(call: ast.Call, name: str, value) -> bool:
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is value for k in call.keywords)


def unpickling_calls(source: str, filename: str = "<src>") -> list[str]:
    """``"file:line: call"`` for every call in ``source`` that can unpickle."""
    tree = ast.parse(source, filename)
    aliases = _aliases(tree)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func, aliases)
        if name is None:
            continue
        name = name.replace("numpy.", "np.", 1) if name.startswith("numpy.") else name
        bad = (name in ALWAYS_BANNED
               or (name == "torch.load" and not _kw_is(node, "weights_only", True))
               or (name == "np.load" and any(k.arg == "allow_pickle" for k in node.keywords)
                   and not _kw_is(node, "allow_pickle", False)))
        if bad:
            found.append(f"{filename}:{node.lineno}: {name}")
    return found


def _shipped_sources() -> list[Path]:
    files = []
    for pkg in SHIPPED:
        files += [p for p in (ROOT / pkg).rglob("*.py") if "tests" not in p.relative_to(ROOT).parts]
    return sorted(files)


def test_no_shipped_code_can_unpickle():
    files = _shipped_sources()
    assert len(files) > 50  # the scan really covers the packages
    found = [hit for p in files for hit in unpickling_calls(p.read_text(), str(p.relative_to(ROOT)))]
    assert not found, "calls that can unpickle:\n" + "\n".join(found)


@pytest.mark.parametrize("src", [
    "import torch\ntorch.load('m.pt')",
    "import torch\ntorch.load('m.pt', weights_only=False)",
    "from torch import load\nload('m.pt')",
    "import pickle\npickle.loads(b'')",
    "from pickle import loads as l\nl(b'')",
    "import numpy as np\nnp.load('a.npy', allow_pickle=True)",
    "import numpy\nnumpy.load('a.npy', allow_pickle=flag)",
    "import joblib\njoblib.load('m.joblib')",
])
def test_scanner_flags_unpickling(src):
    assert unpickling_calls(src)


@pytest.mark.parametrize("src", [
    "import torch\ntorch.load('m.pt', weights_only=True)",
    "import numpy as np\nnp.load('a.npz', allow_pickle=False)\nnp.load('a.npz')",
    "import json\njson.loads('{}')",
    "# torch.load(x)\ns = 'pickle.loads'",
])
def test_scanner_passes_safe_code(src):
    assert not unpickling_calls(src)


class _Payload:
    """Unpickling this writes a marker file: proof that code in a model file ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


def _hostile_files(tmp_path: Path) -> list[Path]:
    import torch

    marker = tmp_path / "PWNED"
    plain = tmp_path / "evil.pt"
    plain.write_bytes(pickle.dumps(_Payload(marker), protocol=4))
    zipped = tmp_path / "evil.pth"
    torch.save({"model": _Payload(marker)}, zipped)
    renamed = tmp_path / "evil.onnx"  # a pickle under a harmless name is still refused by its bytes
    renamed.write_bytes(plain.read_bytes())
    disguised = tmp_path / "evil.safetensors"
    disguised.write_bytes(zipped.read_bytes())
    return [plain, zipped, renamed, disguised]


def test_hostile_pt_passed_to_bench_exits_2_without_running(tmp_path, capsys):
    marker = tmp_path / "PWNED"
    for path in _hostile_files(tmp_path):
        with pytest.raises(SystemExit) as exc:
            main(["bench", "--model", str(path), "--out", str(tmp_path / "out"), "--runs", "1",
                  "--no-calibrate", "--no-cross-check"])
        err = capsys.readouterr().err.strip()
        assert exc.value.code == 2, (path.name, err)
        assert len(err.splitlines()) == 1 and "never unpickles" in err, err
        assert not marker.exists(), f"{path.name}: the payload ran"
    assert not (tmp_path / "out").exists()


def test_hostile_pt_refused_by_the_rss_runner(tmp_path):
    """The harness's subprocess entry point refuses pickles too (it is a CLI of its own)."""
    from benchmarks._runner import open_backend
    from toolchain.errors import CheckpointError

    for path in _hostile_files(tmp_path):
        with pytest.raises((CheckpointError, ValueError)):
            open_backend(path, "torch", 1)
    assert not (tmp_path / "PWNED").exists()
