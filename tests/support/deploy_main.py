"""deploy.py's `main()` in the test process, for the tests that check many
configurations: vLLM's and Ray's imports (about 6 s on 2 cores) are paid once
per session instead of once per `deploy.py --dry-run` process. It is the
function the command runs (`sys.exit(main())`), with the same clean
environment; the command itself, in a process of its own, is still run by
tests/unit/test_settings.py and test_secrets_files.py."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

from support import clean_env


@dataclass(frozen=True)
class Ran:
    returncode: int
    stdout: str
    stderr: str


def deploy_main(*args: str, **environ: str) -> Ran:
    """`deploy.py ARGS` with only ENVIRON (and the repo's .env/.secrets) set."""
    import deploy  # src/, on sys.path (tests/conftest.py)

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = deploy.main(list(args), environ=clean_env(**environ))
        except SystemExit as exit_:  # argparse's --help and usage errors
            code = exit_.code if isinstance(exit_.code, int) else 2
    return Ran(code, out.getvalue(), err.getvalue())
