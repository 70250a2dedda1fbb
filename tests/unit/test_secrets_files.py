"""The .secrets file: refused when others can read it, fixed by the local stack,
and never part of the Docker build context."""

from __future__ import annotations

import fnmatch
import os
import shutil
import subprocess
import sys
from pathlib import Path

from support import REPO_ROOT, clean_env

PLANTED = "hf_PlantedBuildContextToken_3e9a"


def scratch_repo(root: Path) -> Path:
    shutil.copytree(REPO_ROOT / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO_ROOT / "scripts", root / "scripts", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO_ROOT / "docker", root / "docker", ignore=shutil.ignore_patterns("__pycache__"))
    for name in (".env", ".dockerignore", "requirements.txt"):
        shutil.copy(REPO_ROOT / name, root / name)
    (root / ".secrets").write_text(f"HF_TOKEN={PLANTED}\n")
    return root


def test_world_readable_secrets_are_refused(tmp_path: Path) -> None:
    repo = scratch_repo(tmp_path)
    (repo / ".secrets").chmod(0o644)
    out = subprocess.run([sys.executable, str(repo / "src" / "deploy.py"), "--dry-run"], env=clean_env(),
                         text=True, capture_output=True, timeout=60, check=False)
    assert out.returncode == 2
    assert "readable or writable by other users (mode 0644)" in out.stderr and "chmod 600" in out.stderr
    assert PLANTED not in out.stdout + out.stderr
    (repo / ".secrets").chmod(0o600)
    out = subprocess.run([sys.executable, str(repo / "src" / "deploy.py"), "--dry-run"], env=clean_env(),
                         text=True, capture_output=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert '"HF_TOKEN": "<set, redacted>"' in out.stdout and PLANTED not in out.stdout


def test_local_stack_fixes_secrets_mode(tmp_path: Path) -> None:
    secrets = tmp_path / ".secrets"
    secrets.write_text("OPENAI_API_KEY=x\n")
    secrets.chmod(0o644)
    out = subprocess.run(["bash", "-c", f'source "{REPO_ROOT}/scripts/lib.sh"; secure_secrets_file "{secrets}"'],
                         text=True, capture_output=True, check=False)
    assert out.returncode == 0, out.stderr
    assert secrets.stat().st_mode & 0o777 == 0o600
    assert "fixing it: chmod 600" in out.stderr


def docker_context(root: Path) -> list[Path]:
    """Files Docker would send, by .dockerignore's rules (last matching pattern wins)."""
    rules = []
    for line in (root / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            rules.append((line.startswith("!"), line.lstrip("!").rstrip("/")))
    included = []
    for path in root.rglob("*"):
        if not path.is_file():
            continue
        rel = path.relative_to(root).as_posix()
        keep = True
        for negate, pattern in rules:
            parts = rel.split("/")
            prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
            if any(fnmatch.fnmatchcase(prefix, pattern) for prefix in prefixes):
                keep = negate
        if keep:
            included.append(path)
    return included


def test_build_context_excludes_secrets(tmp_path: Path) -> None:
    repo = scratch_repo(tmp_path)
    context = docker_context(repo)
    names = {p.relative_to(repo).as_posix() for p in context}
    assert "requirements.txt" in names and "src/deploy.py" in names and "docker/ray-node.sh" in names
    assert ".secrets" not in names and ".env" not in names
    for path in context:
        assert PLANTED not in path.read_text(errors="replace"), path


def test_dockerfile_takes_no_secrets() -> None:
    text = (REPO_ROOT / "docker" / "Dockerfile").read_text()
    for word in ("HF_TOKEN", "OPENAI_API_KEY", "RAY_AUTH_TOKEN", ".secrets"):
        assert word not in text, word


def test_hf_token_moves_from_environment_to_private_file(tmp_path: Path) -> None:
    """Ray Serve LLM would copy HF_TOKEN from the environment into runtime_env
    (which Ray logs); deploy.py hands it to huggingface_hub through a file."""
    import deploy
    from settings import DEFAULTS, parse_settings

    environ = {**DEFAULTS, "HUGGING_FACE_HUB_TOKEN": PLANTED, "HF_TOKEN_PATH": str(tmp_path / "hf" / "token")}
    deploy.stash_hf_token(environ, parse_settings(environ))
    assert not {"HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACE_TOKEN"} & set(environ)
    token_file = tmp_path / "hf" / "token"
    assert token_file.read_text() == PLANTED and token_file.stat().st_mode & 0o777 == 0o600
    # The real huggingface_hub finds it there.
    out = subprocess.run([sys.executable, "-c", "from huggingface_hub import get_token; print(get_token())"],
                         env=clean_env(HF_TOKEN_PATH=environ["HF_TOKEN_PATH"]), text=True, capture_output=True,
                         timeout=60, check=True)
    assert out.stdout.strip() == PLANTED


def test_the_serving_container_copies_only_the_servers_secrets() -> None:
    """docker/container-entrypoint.sh's list is deploy.py's SERVER_SECRETS."""
    import re

    from deploy import SERVER_SECRETS

    script = (REPO_ROOT / "docker" / "container-entrypoint.sh").read_text()
    listed = re.search(r"^SERVER_SECRETS='([A-Z_|]+)'$", script, re.M)
    assert listed and set(listed.group(1).split("|")) == SERVER_SECRETS


def test_deploy_takes_only_its_own_secrets(tmp_path: Path) -> None:
    """Nginx's keys, the tunnel token and Grafana's password never reach the
    model server's environment, from the file or (host runs) the shell."""
    from deploy import SERVER_SECRETS, drop_foreign_secrets, load_env_files

    secrets = tmp_path / ".secrets"
    secrets.write_text("HF_TOKEN=hf_x\nRAY_AUTH_TOKEN=tok\nOPENAI_API_KEY=sk-a\nAPI_KEY_team=sk-b\n"
                       "CLOUDFLARE_TUNNEL_TOKEN=cf\nGRAFANA_ADMIN_PASSWORD=gp\nNGINX_DASHBOARD_PASSWORD=dp\n")
    environ = {"API_KEY_shell": "sk-c", "NGINX_DASHBOARD_USER": "u", "PATH": "/bin"}
    load_env_files(environ, (tmp_path / "no.env", secrets), SERVER_SECRETS)
    drop_foreign_secrets(environ)
    assert environ == {"HF_TOKEN": "hf_x", "RAY_AUTH_TOKEN": "tok", "PATH": "/bin"}
