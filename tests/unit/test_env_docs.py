"""The declaration of every variable (src/settings.py) against what reads and
documents them: .env, .secrets.example, the compose file, Nginx, the scripts,
and the generated docs/configuration.md."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import settings
from support import REPO_ROOT
from settings import HF_TOKEN_NAMES, SERVER_VARIABLES, VARIABLES

ASSIGNMENT = re.compile(r"^([A-Z][A-Z0-9_]*)=(.*)$")
BRACED = re.compile(r"\$\{([A-Z][A-Z0-9_]*)")
ANY_REF = re.compile(r"\$\{?([A-Z][A-Z0-9_]*)")
# Read by Compose itself from the root .env.
COMPOSE_NATIVE = {"COMPOSE_FILE", "COMPOSE_PROFILES", "COMPOSE_PROJECT_NAME"}
# The official nginx image's own settings (set by its entrypoint, or by
# scripts/render-nginx.sh when it mirrors that entrypoint): upstream names.
NGINX_IMAGE_NATIVE = {"NGINX_ENVSUBST_OUTPUT_DIR", "NGINX_ENVSUBST_TEMPLATE_DIR"}
# Set by the compose file from a documented setting, not a setting itself:
# where Compose publishes the bridge nginx (NGINX_BIND_ADDRESS).
COMPOSE_WIRING = {"NGINX_PUBLISHED_ADDRESS"}
# Upstream settings read by the libraries themselves: they reach NCCL and
# torch.distributed in the vLLM workers through the compose file's environment:
# map (interpolated from .env), never env_file.
UPSTREAM_PREFIXES = ("NCCL_", "GLOO_")
ENVSH = REPO_ROOT / "docker" / "nginx" / "entrypoint.d" / "05-ray-llm.envsh"
TEMPLATES = sorted((REPO_ROOT / "docker" / "nginx" / "templates").glob("*.template"))


def documented(path: Path) -> dict[str, str]:
    return {m.group(1): m.group(2) for line in path.read_text().splitlines() if (m := ASSIGNMENT.match(line))}


def derived_by_envsh() -> set[str]:
    """Variables the Nginx entrypoint computes (not user settings)."""
    names: set[str] = set()
    for exported in re.findall(r"^\s*export\s+([A-Z][A-Z0-9_ ]*)$", ENVSH.read_text(), re.M):
        names |= set(exported.split())
    return names


def read_by_compose() -> set[str]:
    return set(BRACED.findall((REPO_ROOT / "docker" / "docker-compose.yml").read_text())) | COMPOSE_NATIVE


def read_by_secret_files() -> set[str]:
    """Names the *-secret services (docker/nginx/secret-file.sh) take from .secrets:
    NAME DEST OWNER [REQUIRED...] in their command."""
    compose = yaml.safe_load((REPO_ROOT / "docker" / "docker-compose.yml").read_text())
    names: set[str] = set()
    for service in compose["services"].values():
        if str(service.get("entrypoint", [""])[0]).endswith("/secret-file.sh"):
            command = service["command"]
            # REQUIRED may list alternatives (A|B), patterns among them (API_KEY_*).
            names |= {command[0], *(n for r in command[3:] for n in r.split("|") if "*" not in n)}
    return names


def read_by_nginx() -> set[str]:
    names = set()
    for template in TEMPLATES:
        names |= set(BRACED.findall(template.read_text()))
    names |= set(ANY_REF.findall(ENVSH.read_text()))
    return names - derived_by_envsh() - NGINX_IMAGE_NATIVE - COMPOSE_WIRING


def read_by_deploy() -> set[str]:
    return {v.name for v in SERVER_VARIABLES} | set(HF_TOKEN_NAMES)


def read_by_scripts() -> set[str]:
    names: set[str] = set()
    for script in [*REPO_ROOT.glob("scripts/*.sh"), *REPO_ROOT.glob("docker/**/*.sh")]:
        names |= set(ANY_REF.findall(script.read_text()))
    return names


def all_documented() -> set[str]:
    return set(documented(REPO_ROOT / ".env")) | set(documented(REPO_ROOT / ".secrets.example"))


def test_everything_read_is_documented() -> None:
    docs = all_documented()
    secrets_text = (REPO_ROOT / ".secrets.example").read_text()
    for source, names in (("docker-compose.yml", read_by_compose()), ("nginx template/entrypoint", read_by_nginx()),
                          ("deploy.py", read_by_deploy())):
        # Older HF token names are documented in the .secrets.example comment.
        missing = sorted(n for n in names - docs if n not in secrets_text)
        assert not missing, f"{source} reads undocumented variables: {missing}"


def test_everything_documented_is_read() -> None:
    read = read_by_compose() | read_by_nginx() | read_by_deploy() | read_by_scripts() | read_by_secret_files()
    unused = sorted(n for n in all_documented() - read if not n.startswith(UPSTREAM_PREFIXES))
    assert not unused, f"documented but never read: {unused}"


def test_every_env_variable_has_a_comment() -> None:
    lines = (REPO_ROOT / ".env").read_text().splitlines()
    for i, line in enumerate(lines):
        if ASSIGNMENT.match(line):
            assert i > 0 and lines[i - 1].startswith("#"), f".env line {i + 1} ({line}) has no comment above it"


def test_env_holds_no_secrets_and_example_is_empty() -> None:
    env = documented(REPO_ROOT / ".env")
    assert not {"HF_TOKEN", "OPENAI_API_KEY"} & set(env)
    example = documented(REPO_ROOT / ".secrets.example")
    assert set(example) == {"HF_TOKEN", "OPENAI_API_KEY", "RAY_AUTH_TOKEN", "NGINX_DASHBOARD_USER",
                            "NGINX_DASHBOARD_PASSWORD", "GRAFANA_ADMIN_PASSWORD", "CLOUDFLARE_TUNNEL_TOKEN",
                            "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert all(value == "" for value in example.values())


def test_secrets_and_runtime_files_are_ignored() -> None:
    gitignore = (REPO_ROOT / ".gitignore").read_text().splitlines()
    dockerignore = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    for entry in (".secrets", ".runtime/", ".venv/", "__pycache__/"):
        assert entry in gitignore, entry
    for entry in (".secrets", ".runtime/", ".venv/", ".env"):
        assert entry in dockerignore, entry
    # The build context is an allow-list: the locks, src/, the entry points
    # and the build's CA helper.
    start = dockerignore.index("*")
    assert dockerignore[start:start + 9] == ["*", "!requirements.txt", "!requirements-cpu.txt", "!src/",
                                             "!docker/container-entrypoint.sh", "!docker/ray-node.sh",
                                             "!scripts/lib.sh", "!docker/with-build-ca.sh", "!docker/nginx/dotenv.sh"]


def test_env_and_secrets_example_are_the_declaration() -> None:
    """Each variable is declared once in settings.py; .env writes every
    declared setting with its declared default, .secrets.example every secret."""
    env = documented(REPO_ROOT / ".env")
    declared = {v.name: v for v in VARIABLES}
    assert set(env) == {n for n, v in declared.items() if not v.secret}
    assert {n: env[n] for n in env} == {n: v.default for n, v in declared.items() if not v.secret}
    assert set(documented(REPO_ROOT / ".secrets.example")) == {n for n, v in declared.items() if v.secret}


def test_env_values_pass_their_declared_rules() -> None:
    env = documented(REPO_ROOT / ".env")
    for layer in settings.LAYERS:
        layer.model_validate(env)  # raises, naming the variable, on a bad default


def named_in_code(path: Path) -> set[str]:
    """Names on the script's code lines (the envsh reads some by name:
    `ray_llm_count NGINX_CONN_LIMIT ...`)."""
    code = "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#"))
    return set(re.findall(r"\b([A-Z][A-Z0-9_]+)\b", code))


# Where each layer's variables are read, as text to search for ${NAME} / $NAME.
LAYER_READERS = {
    "Settings": lambda: read_by_deploy() & read_by_compose(),
    "GatewaySettings": lambda: read_by_nginx() | named_in_code(ENVSH) | read_by_secret_files(),
    "ComposeSettings": lambda: read_by_compose() | read_by_secret_files(),
    "NodeSettings": lambda: read_by_compose() | read_by_scripts(),
}


@pytest.mark.parametrize("layer", settings.LAYERS, ids=lambda layer: layer.__name__)
def test_each_layer_is_read_where_it_says(layer: type[settings.Layer]) -> None:
    """A variable declared for a layer is read there: the server's reach the
    serving containers through the compose file (tests/unit/test_compose.py
    checks every service), the gateway's the Nginx templates or entrypoint."""
    read = LAYER_READERS[layer.__name__]()
    unread = [v.name for v in VARIABLES if v.layer is layer and v.name not in read and not v.secret]
    if layer is settings.ComposeSettings:
        unread = [n for n in unread if n not in COMPOSE_NATIVE]
    assert not unread, f"{layer.READER} is said to read {unread}, but does not"


def test_configuration_reference_is_generated_from_the_declaration() -> None:
    done = subprocess.run([sys.executable, str(REPO_ROOT / "tools" / "make-config-reference.py"), "--check"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_rules_refuse_and_name_the_variable() -> None:
    """The declared rules of the non-server layers are real validators too."""
    with pytest.raises(Exception, match="NGINX_STATUS_PORT"):
        settings.GatewaySettings.model_validate({"NGINX_STATUS_PORT": "80x"})
    with pytest.raises(Exception, match="NGINX_CLIENT_MAX_BODY_SIZE"):
        settings.GatewaySettings.model_validate({"NGINX_CLIENT_MAX_BODY_SIZE": "ten megs"})
