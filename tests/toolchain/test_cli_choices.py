"""Options with a fixed set list it in --help, read from the registry (a new entry appears by itself)."""

import pytest
from typer.testing import CliRunner

from devices.profiles import profile_names
from export.exporter import FORMATS
from toolchain.cli import build_app
from toolchain.importance import available
from toolchain.removal import GRANULARITIES
from toolchain.sampling import STRATEGIES
from toolchain.train import SELECT_METRICS

CHOICES = {
    ("prune", "--criterion"): available(),
    ("prune", "--sampling"): STRATEGIES,
    ("deploy", "--criterion"): available(),
    ("deploy", "--granularity"): GRANULARITIES,
    ("deploy", "--target"): profile_names(),
    ("export", "--format"): FORMATS,
    ("bench", "--target"): profile_names(),
    ("train", "--select"): SELECT_METRICS,
}


@pytest.fixture(scope="module")
def helps():
    app, runner = build_app(), CliRunner()
    out = {}
    for command in {c for c, _ in CHOICES}:
        result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "400", "TERMINAL_WIDTH": "400"})
        assert result.exit_code == 0, result.output
        out[command] = result.output
    return out


@pytest.mark.parametrize("command,flag", sorted(CHOICES))
def test_help_lists_the_registry(helps, command, flag):
    line = next(line for line in helps[command].splitlines() if f"{flag} " in line)
    assert all(value in line for value in CHOICES[(command, flag)]), line
