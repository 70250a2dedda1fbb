"""The two files every command reads: .env (settings) and .secrets.

Where they are (RAY_LLM_SECRETS_FILE names the secrets file in a container),
whether .secrets is private, and loading them with python-dotenv into an
environment mapping in which values already set win. Used by deploy.py and by
the tools (doctor.py, download_model.py), which never import the server.
"""

from __future__ import annotations

from pathlib import Path
from typing import Collection, Mapping, MutableMapping, Sequence

REPO_ROOT = Path(__file__).resolve().parent.parent
ENV_FILES = (REPO_ROOT / ".env", REPO_ROOT / ".secrets")
# Set by docker/container-entrypoint.sh: the container's private copy of the
# .secrets that Compose mounts (a Compose secret, never in the environment).
SECRETS_FILE_VAR = "RAY_LLM_SECRETS_FILE"


def env_files(environ: Mapping[str, str]) -> tuple[Path, Path]:
    """.env and the secrets file to read: RAY_LLM_SECRETS_FILE, else the repo's .secrets."""
    secrets = environ.get(SECRETS_FILE_VAR)
    return ENV_FILES[0], Path(secrets) if secrets else ENV_FILES[1]


def insecure_secrets(path: Path) -> str | None:
    """A .secrets that other users can read is refused (see plan.md)."""
    if not path.is_file():
        return None
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        return (f"{path} is readable or writable by other users (mode {mode:04o}); "
                f"it holds secrets. Fix it with: chmod 600 {path}")
    return None


def load_env_files(environ: MutableMapping[str, str], files: Sequence[Path] = ENV_FILES,
                   secret_names: Collection[str] | None = None) -> None:
    """Fill in variables from .env/.secrets; values already in environ win.
    With secret_names, only those are taken from the secrets file (files[1])."""
    from dotenv import dotenv_values

    for index, path in enumerate(files):
        if path.is_file():
            for key, value in dotenv_values(path).items():
                if index == 1 and secret_names is not None and key not in secret_names:
                    continue
                if value is not None and key not in environ:
                    environ[key] = value
