"""The one shell dotenv parser (docker/nginx/dotenv.sh) reads .env and .secrets
the way python-dotenv (the Python side's parser) does, in every shell that
runs it: Debian's dash and the Nginx image's busybox (render.sh,
secret-file.sh) and bash through scripts/lib.sh's load_env_files (host
scripts, the main image). tests/unit/test_nginx.py also checks the render.sh
path end to end."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from support import REPO_ROOT, require_tool

DOTENV_SH = REPO_ROOT / "docker" / "nginx" / "dotenv.sh"
LIB_SH = REPO_ROOT / "scripts" / "lib.sh"
PAD = "-0123456789abcdef0123456789"
# id -> file content. The first seven are tests/unit/test_nginx.py's
# SECRETS_FILE_CASES (render.sh's path).
CASES = {
    "plain": f"OPENAI_API_KEY=sk-plain{PAD}\n",
    "single-quotes": f"OPENAI_API_KEY='sk-single{PAD}'\n",
    "double-quotes": f'OPENAI_API_KEY="sk-double{PAD}"\n',
    "export": f"export OPENAI_API_KEY=sk-exported{PAD}\n",
    "indent-inline-comment": f"  OPENAI_API_KEY=sk-comment{PAD} # a note\n",
    "commented-out-no-final-newline": f"# OPENAI_API_KEY=sk-commented-out{PAD}\nOPENAI_API_KEY=sk-real{PAD}",
    "empty-value": "HF_TOKEN=hf_x\nOPENAI_API_KEY=\n",
    "export-tab": "export\tA=x\n",
    "empty-quotes": "A=\nB=''\nC=\"\"\n",
    "equals-in-value": "A=b=c==\n",
    "hash-in-quotes": "A=\"x # y\"\nB='p #q'\n",
    "hash-without-blank": "A=abc#def\n",
    "tab-inline-comment": "A=x\t# c\n",
    "trailing-blanks": "A=abc   \nB='x'   \n",
    "blank-and-comment-lines": "\n\n  \n# c\nA=1\n",
    "underscore-keys": "_A1=x\nA_b=y\n",
    "inner-quotes": "A=a'b\"c\n",
    "dollar-unbraced": "A=$HOME\nB=a$b\n",
    "backslash": "A=a\\b\n",
    "crlf": "A=x\r\nB='y'\r\n",
    "unicode": "A=häé€ ключ\n",
    "no-equals": "A\nB=1\n",
    "key-named-export": "export=1\n",
    "repeated": "A=1\nA=2\n",
    "base64": "A=ab+/cd==\n",
    "spaces-in-quotes": "A='  spaced  '\nB=\" two  words \"\n",
    "caller-variable-names": "line=1\nkey=2\nvalue=3\nfile=4\ntrimmed=5\n",
    "quoted-then-comment": 'A="x" # c\nB=\'y z\'\t# c\n',
    "blank-before-value": "A= x\nB=  'q'\n",
}
# Where the shell parser and python-dotenv disagree (both shell parsers did
# before they were one). strict: a fix makes these pass, and the marks must go.
DIFFERENCES = {
    "braced-variable": ("A=${HOME}\n", "python-dotenv expands ${VAR}; the shell keeps it literally"),
    "escape-in-double-quotes": ('A="a\\nb"\n', "python-dotenv decodes escapes in double quotes"),
    "blanks-around-equals": ("A = x\n", "python-dotenv takes 'A = x'; the shell skips the line"),
    "unbalanced-quote": ('A="abc\n', "python-dotenv refuses the line; the shell keeps the quote"),
}
SHELLS = {"sh": ["sh"], "busybox": ["busybox", "sh"], "bash-lib": ["bash"]}


def python_dotenv(path: Path) -> dict[str, str]:
    from dotenv import dotenv_values

    return {k: v for k, v in dotenv_values(path).items() if v is not None}


def shell_parse(shell: str, path: Path) -> dict[str, str]:
    """KEY -> VALUE as the shell parser hands them on (the last one wins, as in
    python-dotenv). bash-lib: what scripts/lib.sh's load_env_files exports."""
    cmd = SHELLS[shell]
    require_tool(cmd[0])
    if shell == "bash-lib":
        # Everything load_env_files adds to a near-empty environment.
        script = ('source "$1"; before=$(env | cut -d= -f1 | sort); load_env_files "$2"; '
                  'for k in $(env | cut -d= -f1 | sort | comm -13 <(printf "%s\\n" "$before") -); do '
                  'printf "%s\\0%s\\0" "$k" "${!k}"; done')
        args = [str(LIB_SH), str(path)]
    else:
        script = '. "$1"; each() { printf "%s\\0%s\\0" "$1" "$2"; }; ray_llm_dotenv_each "$2" each'
        args = [str(DOTENV_SH), str(path)]
    out = subprocess.run([*cmd, "-c", script, "parse", *args], env={"PATH": "/usr/bin:/bin"},
                         capture_output=True, timeout=30, check=False)
    assert out.returncode == 0, out.stderr.decode()
    fields = out.stdout.decode().split("\0")[:-1]
    return dict(zip(fields[::2], fields[1::2]))


# load_env_files exports a name once: the first line of a file wins there,
# the last one in python-dotenv (and in the parser itself).
BASH_LIB_DIFFERENCES = {"repeated": "load_env_files keeps the first of two lines, python-dotenv the last"}


def case_params() -> list[object]:
    params = []
    for shell in SHELLS:
        for name, content in CASES.items():
            why = BASH_LIB_DIFFERENCES.get(name) if shell == "bash-lib" else None
            marks = [pytest.mark.xfail(strict=True, reason=why)] if why else []
            params.append(pytest.param(shell, content, id=f"{shell}-{name}", marks=marks))
        for name, (content, why) in DIFFERENCES.items():
            params.append(pytest.param(shell, content, id=f"{shell}-{name}",
                                       marks=pytest.mark.xfail(strict=True, reason=why)))
    return params


@pytest.mark.parametrize(("shell", "content"), case_params())
def test_shell_parser_reads_like_python_dotenv(shell: str, content: str, tmp_path: Path) -> None:
    path = tmp_path / "dotenv"
    path.write_bytes(content.encode())
    assert shell_parse(shell, path) == python_dotenv(path)


def test_load_env_files_keeps_what_is_set(tmp_path: Path) -> None:
    """The shell wins over the files (Compose's rule), a missing file is
    skipped, and the caller's own variables stay untouched."""
    require_tool("bash")
    path = tmp_path / "dotenv"
    path.write_text("A=file\nB=file-b\nkey=k\n")
    script = ('source "$1"; key=mine line=mine value=mine; A=shell; export A; '
              'load_env_files "$2/missing" "$2/dotenv"; '
              'printf "%s|" "$A" "$B" "$key" "$line" "$value" "${ray_llm_dotenv_key-unset}"')
    out = subprocess.run(["bash", "-c", script, "t", str(LIB_SH), str(tmp_path)], env={"PATH": "/usr/bin:/bin"},
                         text=True, capture_output=True, timeout=30, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "shell|file-b|mine|mine|mine|unset|"
