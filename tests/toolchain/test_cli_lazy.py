"""`medprune --help` stays light: option choices are read from the registries' source, not imported, and
each read equals what the imported registry holds (so a reader that drifts fails here)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from toolchain.commands.choices import constant, criterion_names

HEAVY = ("torch", "timm", "zennit", "torch_pruning", "torchvision", "onnxruntime", "openvino")


def test_static_reads_equal_the_imported_registries():
    from devices.deploy.config import TARGET_ALIASES
    from export.exporter import FORMATS
    from toolchain.data.dataset import SPLITS
    from toolchain.data.labels import ALLOW_FLAG
    from toolchain.importance import available
    from toolchain.masking import SCOPES
    from toolchain.removal import GRANULARITIES
    from toolchain.sampling import STRATEGIES
    from toolchain.train import SELECT_METRICS

    assert list(criterion_names()) == available()  # @register classes and the Torch-Pruning peer table
    for module, name, value in (("toolchain.sampling", "STRATEGIES", STRATEGIES),
                                ("toolchain.masking", "SCOPES", SCOPES),
                                ("toolchain.data.dataset", "SPLITS", SPLITS),
                                ("toolchain.train", "SELECT_METRICS", SELECT_METRICS),
                                ("toolchain.removal.remove", "GRANULARITIES", GRANULARITIES),
                                ("toolchain.data.labels", "ALLOW_FLAG", ALLOW_FLAG),
                                ("export.exporter", "FORMATS", FORMATS),
                                ("devices.deploy.config", "TARGET_ALIASES", TARGET_ALIASES)):
        assert constant(module, name) == value, (module, name)


def test_missing_constant_is_a_lookup_error():
    with pytest.raises(LookupError, match="assigns no top-level NOPE"):
        constant("toolchain.sampling", "NOPE")


def test_top_level_help_imports_no_heavy_module():
    code = ("import sys\nfrom toolchain.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit as e:\n    rc = e.code\n"
            f"print('HEAVY', rc, [m for m in {HEAVY!r} if m in sys.modules])\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"})
    last = res.stdout.strip().splitlines()[-1]
    assert last == "HEAVY 0 []", (res.stdout[-2000:], res.stderr[-2000:])
    for command in ("train", "prune", "deploy", "export", "predict", "verify-package"):
        assert command in res.stdout
