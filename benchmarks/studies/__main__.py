"""``python -m benchmarks.studies NAME [OPTIONS]``: ``medprune study`` for a checkout on PYTHONPATH that is not
pip-installed (so the ``medprune.commands`` entry points do not exist), e.g. a bare GPU machine."""

import sys

from toolchain.errors import MedpruneError

from .registry import run_study

try:
    sys.exit(run_study(sys.argv[1:]))
except MedpruneError as exc:  # one line and the same exit status as the medprune CLI
    print(f"medprune: error: {str(exc).splitlines()[0]}", file=sys.stderr)
    sys.exit(exc.exit_code)
