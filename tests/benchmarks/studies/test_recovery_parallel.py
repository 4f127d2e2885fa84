"""``medprune study recovery --workers 2``: Ray tasks write the cells the sequential path writes (same files,
same numbers), the report is assembled as ``--cached-only`` would, failures and a missing Ray are reported."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from benchmarks.studies import _recovery_parallel as par
from benchmarks.studies import recovery_grid as grid
from tests.conftest import train_tiny_resnet
from toolchain.errors import ConfigError

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")

# wall-clock measurements differ between any two runs; every other field must be equal
TIMINGS = {"latency_ms", "speedup_ort", "load_avg_1min", "search_s", "recover_s", "epoch_s", "eval_s", "wall_s",
           "sec_per_epoch"}


def _untimed(obj):
    if isinstance(obj, dict):
        return {k: _untimed(v) for k, v in obj.items() if k not in TIMINGS}
    if isinstance(obj, list):
        return [_untimed(v) for v in obj]
    return obj


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("recovery_parallel")
    weights, _ = train_tiny_resnet(root, epochs=1, threads="1")
    return root, weights


def _argv(weights, out, *flags):
    return ["--models", "resnet50", "--data", "tinymnist", "--checkpoint", f"tinymnist/resnet50={weights}",
            "--criteria", "taylor", "--model-macs", "resnet50=1.5/2", "--recover-epochs", "1",
            "--n-per-class", "2", "--pool-per-class", "4", "--repeats", "3", "--out", str(out), *flags]


def _cells(cache):
    return {p.name: json.loads(p.read_text()) for p in sorted((cache / "studies" / "recovery").glob("*.json"))}


@pytest.mark.slow  # a Ray start and 4 tiny cells: ~85 s on the loaded 2-core machine
def test_workers_2_writes_the_cells_and_rows_of_workers_1(tiny, monkeypatch, capsys):
    root, weights = tiny
    monkeypatch.setenv("MEDPRUNE_THREADS", "1")
    assert grid.__file__.startswith(str(Path(__file__).resolve().parents[3]))  # this tree's code is tested
    for workers in (1, 2):
        monkeypatch.setenv("MEDPRUNE_CACHE", str(root / f"cache{workers}"))
        assert grid.main(_argv(weights, root / f"out{workers}", "--workers", str(workers))) == 0
    log = capsys.readouterr().out
    assert "tinymnist/resnet50: 2 cell(s) submitted to 2 Ray workers, 0 cached" in log
    for target in ("1.5", "2"):  # one progress line per finished cell
        assert sum(f"tinymnist/resnet50 · taylor · ÷{target}: ratio" in line for line in log.splitlines()) == 1
    # the sequential path scores taylor once for both targets, each task scores it in its own worker
    one, two = _cells(root / "cache1"), _cells(root / "cache2")
    assert sorted(one) == sorted(two) and len(one) == 3  # 2 cells + the dense probabilities, same keys
    assert all(two[k].get("code_version") == one[k].get("code_version") for k in one)
    assert _untimed(two) == _untimed(one)
    rows = [json.loads((root / f"out{w}" / "recovery.json").read_text())["models"]["tinymnist:resnet50"]["rows"]
            for w in (1, 2)]
    assert len(rows[0]) == 4 and _untimed(rows[1]) == _untimed(rows[0])

    # the --workers 2 report is exactly what --cached-only assembles from its cells
    assert grid.main(_argv(weights, root / "out3", "--cached-only")) == 0
    report = [json.loads((root / f"out{w}" / "recovery.json").read_text()) for w in (2, 3)]
    assert report[0]["models"] == report[1]["models"]


class _FakeRay:
    """``ray.wait``/``ray.get`` over ready results; an exception result is a failed task."""

    def __init__(self, results):
        self.results = results

    def wait(self, refs, num_returns, timeout):
        return refs[:num_returns], refs[num_returns:]

    def get(self, ref):
        if isinstance(self.results[ref], Exception):
            raise self.results[ref]
        return self.results[ref]


def test_a_failed_cell_is_named_with_its_error_and_the_others_finish():
    class TaskError(Exception):  # Ray wraps a task's exception; .cause is the original
        cause = ValueError("first line\nMACs target ÷9 not reached")

    done = {"ratio": 0.5, "macs_div": 2.0, "speedup_ort": 1.5, "seconds": 3.0}
    jobs = {"a": "d/vgg19 · lrp · ÷9", "b": "d/vgg19 · taylor · ÷2", "c": "d/vgg19 · random · ÷2"}
    lines: list[str] = []
    failed = par.collect(_FakeRay({"a": TaskError("wrapped"), "b": done, "c": done}), jobs, lines.append)
    assert failed == 1
    assert lines[0] == "[1/3] d/vgg19 · lrp · ÷9: FAILED: ValueError: MACs target ÷9 not reached"
    assert lines[1:] == [f"[{i}/3] d/vgg19 · {c} · ÷2: ratio 0.50, MACs ÷2.00, ORT speedup ×1.50 (3s)"
                         for i, c in ((2, "taylor"), (3, "random"))]


def test_failed_cells_exit_1_without_a_report(monkeypatch, tmp_path):
    monkeypatch.setattr(par, "compute_cells", lambda args, log: (args, 2))
    assert grid.main(["--workers", "2", "--out", str(tmp_path)]) == 1
    assert not list(tmp_path.iterdir())


def test_ray_absent_is_one_line_exit_2(monkeypatch, tmp_path, capsys):
    from toolchain.cli import main

    monkeypatch.setenv("MEDPRUNE_CACHE", str(tmp_path))
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    with pytest.raises(SystemExit) as exc:
        main(["study", "recovery", "--workers", "2", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "--workers 2 needs Ray" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_ray_that_does_not_start_is_one_line(monkeypatch, tmp_path):
    from benchmarks.studies.paper import sweep

    def refuse(num_cpus=None):
        raise RuntimeError("Failed to start the GCS\nport 6379 already in use")

    monkeypatch.setattr(sweep, "start_ray", refuse)
    with pytest.raises(ConfigError, match=r"Ray did not start: RuntimeError: port 6379 already in use$"):
        grid.main(["--workers", "2", "--out", str(tmp_path)])


@pytest.mark.parametrize("flags,needle", [(["--workers", "0"], "--workers"), (["--workers", "x"], "--workers"),
                                          (["--workers", "2", "--retime"], "--retime")])
def test_bad_workers_flags_are_refused(tmp_path, flags, needle):
    with pytest.raises(ConfigError, match=needle):
        grid.main([*flags, "--out", str(tmp_path)])


def test_bad_threads_per_task_are_refused(monkeypatch):
    monkeypatch.setenv("MEDPRUNE_THREADS", "two")
    with pytest.raises(ConfigError, match="MEDPRUNE_THREADS"):
        par._task_env()
