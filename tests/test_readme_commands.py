"""README.md tells the truth: every command it shows parses (medprune, its studies, make targets and their
variables, python -m), and every repo file and Python name it cites exists. How: ``tests/_readme_check.py``."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests._readme_check import (
    MAKE,
    MEDPRUNE,
    PYTHON_M,
    README,
    ROOT,
    Command,
    check,
    extract,
    missing_names,
    missing_paths,
    problems,
)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("medprune_data")  # make -n sees an empty data folder, not the real one


needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


@needs_make
def test_every_readme_command_parses(data_dir):
    commands = extract(README.read_text())
    kinds = {p.pattern: sum(bool(p.match(c.text)) for c in commands) for p in (MEDPRUNE, PYTHON_M, MAKE)}
    assert all(kinds.values()), f"the extractor lost a kind of command: {kinds}"
    assert any(c.text.split()[1:2] == ["study"] for c in commands), "no `medprune study` command found"
    found = problems(README.read_text(), data_dir)
    assert not found, "README commands that do not work as written:\n" + "\n".join(found)


def test_readme_paths_exist():
    missing = missing_paths(README.read_text(), ROOT)
    assert not missing, "README names files that do not exist:\n" + "\n".join(missing)


def test_readme_python_names_exist():
    missing = missing_names(README.read_text())
    assert not missing, "README names Python objects that do not exist:\n" + "\n".join(missing)


FAKE = """
Run `medprune prune --checkpoint X.safetensors --made-up-flag 3` or `medprune deploy --target nowhere`.

```bash
medprune nosuchcommand --out dist
make no-such-target
make deploy NO_SUCH_VAR=1
make deploy TARGET=nowhere
medprune study recovery --made-up-study-flag
medprune study no_such_study
python -m benchmarks.headline --made-up
medprune export --checkpoint X.safetensors --format onnx \\
  --precision int3
medprune export --format onnx --out dist
```
See [the guide](NO_SUCH_GUIDE.md), `benchmarks/results/no_such_result.{json,md}` and
`toolchain.metrics.no_such_metric`.
"""

GOOD = """
Try `medprune deploy --sign-key KEY` (a fragment: required options may be left out) and `make
deploy SPEEDUP=3`, or `medprune deploy … --checkpoint <PATH>`.

```bash
medprune prune --checkpoint X.safetensors --data pneumoniamnist --criterion lrp \\
  --ratios 0.15,0.3 --json prune.json   # a comment
medprune deploy --target TARGET --checkpoint .cache/medprune/checkpoints/<run>/model.safetensors
medprune predict IMAGE_OR_FOLDER... -c CHECKPOINT -o x.json|x.csv
medprune study recovery_selection --arm long --update-headline
make deploy MODEL=resnet50 TARGET=x86-edge SIGN_KEY=$KEY
python -m benchmarks.headline --check
medprune study NAME
```
[Architecture](ARCHITECTURE.md#stages), `benchmarks/results/headline.json`, `devices/profiles/*.json`,
`toolchain.removal.remove_units(model, masks,
example_input, granularity, round_to)`.
"""


# what each FAKE command must be refused for, in extraction order (code blocks, then inline spans)
FAKE_REFUSED = ["nosuchcommand", "no-such-target", "NO_SUCH_VAR", "nowhere", "--made-up-study-flag", "no_such_study",
                "--made-up", "int3", "checkpoint", "--made-up-flag", "nowhere"]


@needs_make
def test_checker_refuses_each_made_up_command(data_dir):
    commands = extract(FAKE)
    assert len(commands) == len(FAKE_REFUSED), [c.text for c in commands]
    assert "--precision int3" in commands[7].text  # the continuation line was joined
    for command, expected in zip(commands, FAKE_REFUSED, strict=True):
        problem = check(command, data_dir)
        assert problem and expected in problem, f"{command}: expected a problem naming {expected!r}, got {problem!r}"
    missing = missing_paths(FAKE, ROOT)
    assert len(missing) == 2 and "NO_SUCH_GUIDE.md" in missing[0] and "no_such_result" in missing[1]
    assert missing_names(FAKE) == ["line 17: toolchain.metrics.no_such_metric does not exist"]


@needs_make
def test_checker_passes_commands_that_work(data_dir):
    assert len(extract(GOOD)) == 10
    assert problems(GOOD, data_dir) == []
    assert missing_paths(GOOD, ROOT) == []
    assert missing_names(GOOD) == []


def test_study_choice_checked_against_its_own_parser(data_dir):
    problem = check(Command("medprune study recovery_selection --arm nonsense", 1, False), data_dir)
    assert problem and "nonsense" in problem
