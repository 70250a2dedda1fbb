#!/usr/bin/env python3
"""Serve a model (or the several of MODELS_FILE) as an OpenAI-compatible API with Ray Serve LLM.

Reads the environment (plus .env and .secrets next to the repo root when they
exist, or the secrets file named by RAY_LLM_SECRETS_FILE, which is how
Compose hands over .secrets; variables already set win), validates all of it before importing Ray,
then builds Ray's LLMConfig objects (checked by Ray's own model, and
ENGINE_KWARGS against vLLM's engine arguments) and the OpenAI app, and runs it
with serve.run.

Exit codes: 0 ok (or --dry-run), 2 bad configuration (nothing started),
3 the app stayed unhealthy past WATCHDOG_RECOVERY_TIMEOUT (restart it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import tempfile
import time
from types import FrameType
from pathlib import Path
from typing import Any, Mapping, MutableMapping, Sequence

import config_check
import llm_config
import model_source
from dotenv_files import env_files, insecure_secrets, load_env_files
from engine_watchdog import Recovery
from settings import ADAPTER_STORE_SECRETS, HF_TOKEN_NAMES, ConfigError, Settings, help_text, parse_settings, read_models_file

EXIT_CONFIG = 2
# The app stayed unhealthy past WATCHDOG_RECOVERY_TIMEOUT: restart everything.
EXIT_UNRECOVERED = 3
# How often the running app's status is polled (for the second bound).
STATUS_POLL_S = 5.0
# What the model server takes from .secrets: the Hugging Face token (moved to
# a file, stash_hf_token), Ray's cluster token and the LoRA adapter store's
# keys (boto3 reads them from the environment). Nothing else.
SERVER_SECRETS = frozenset({*HF_TOKEN_NAMES, "RAY_AUTH_TOKEN", *ADAPTER_STORE_SECRETS})
# .secrets values the model server never needs (the names API_KEY_* too).
FOREIGN_SECRETS = frozenset({"OPENAI_API_KEY", "NGINX_DASHBOARD_USER", "NGINX_DASHBOARD_PASSWORD",
                             "GRAFANA_ADMIN_PASSWORD", "CLOUDFLARE_TUNNEL_TOKEN"})
USAGE_STATS_VAR = "RAY_USAGE_STATS_ENABLED"
# src/: importable by every Ray worker (the model server classes, the middlewares).
SRC_DIR = str(Path(__file__).resolve().parent)
# Even disabled, a cluster started with `ray start` sends one "disabled" report
# unless this is empty (docker/ray-node.sh does the same for the head profile).
USAGE_REPORT_URL_VAR = "RAY_USAGE_STATS_REPORT_URL"
# Where a cluster's nodes find the secrets --serve-config never writes.
SECRETS_ON_A_CLUSTER = (
    "RAY_AUTH_TOKEN (with RAY_AUTH_MODE=token): the same on every node and on `serve deploy`'s side",
    "HF_TOKEN_PATH: a file holding the Hugging Face token (gated models; an HF_TOKEN variable would be "
    "copied into Ray's logged runtime_env)",
    "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY: the LoRA adapter store's keys, when LORA_ADAPTERS_PATH is s3://",
)
# What --serve-config writes.
SERVE_CONFIG_FILE = "serve-config.yaml"
NODE_ENV_FILE = "ray-node.env"
RAYSERVICE_FILE = "rayservice.yaml"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="deploy.py",
        description="Serve a model as an OpenAI-compatible API with Ray Serve LLM (vLLM engine).",
        epilog=help_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="validate (with Ray Serve LLM's LLMConfig and vLLM's engine arguments), print the resolved configuration (secrets redacted) and exit without starting anything",
    )
    parser.add_argument(
        "--serve-config",
        metavar="DIR",
        help=f"validate as --dry-run does, then write the same app as a Ray Serve config ({SERVE_CONFIG_FILE}, "
             f"for `serve deploy`), the environment every Ray node needs ({NODE_ENV_FILE}) and a KubeRay "
             f"RayService with Nginx ({RAYSERVICE_FILE}) into DIR; no secrets are written (docs/outgrow-compose.md)",
    )
    return parser.parse_args(argv)


def drop_foreign_secrets(environ: MutableMapping[str, str]) -> None:
    """Secrets of other processes (Nginx's API keys and dashboard password,
    the tunnel token, Grafana's password) leave the environment before Ray
    starts: every Ray process inherits it. Host runs export all of .secrets."""
    for name in [n for n in environ if n in FOREIGN_SECRETS or n.startswith("API_KEY_")]:
        del environ[name]


def stash_hf_token(environ: MutableMapping[str, str], settings: Settings) -> None:
    """Move the Hugging Face token from the environment into a private file.

    Ray Serve LLM copies HF_TOKEN / HUGGING_FACE_HUB_TOKEN from the replica's
    environment into the engine actors' runtime_env, and Ray logs every
    runtime_env it creates. huggingface_hub reads the token from the file
    named by HF_TOKEN_PATH instead, so no Ray process ever holds it in its env.
    """
    for name in HF_TOKEN_NAMES:
        environ.pop(name, None)
    if not settings.hf_token:
        return
    path = Path(environ.get("HF_TOKEN_PATH") or Path(tempfile.gettempdir()) / f"ray-llm-{os.getuid()}" / "hf_token")
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(settings.hf_token)
    os.chmod(path, 0o600)
    environ["HF_TOKEN_PATH"] = str(path)


def drop_empty_upstream_vars(environ: MutableMapping[str, str]) -> None:
    """An empty NCCL_*/GLOO_*/AWS_* (from .env) would override the library's
    default (boto3 would take an empty AWS_ENDPOINT_URL_S3 as the store); unset it."""
    for name in [n for n, v in environ.items() if n.startswith(("NCCL_", "GLOO_", "AWS_")) and not v.strip()]:
        del environ[name]


def export_ray_auth(environ: MutableMapping[str, str], settings: Settings) -> None:
    """Use the shared cluster token when one is configured (multi-node, Nginx)."""
    if settings.ray_auth_token:
        environ["RAY_AUTH_MODE"] = "token"
        environ["RAY_AUTH_TOKEN"] = settings.ray_auth_token


def export_for_workers(environ: MutableMapping[str, str], settings: Settings) -> None:
    """What Ray's processes read from their environment (llm_config.node_env:
    how requests and tokens cross Ray Serve, the watchdog's bound, the HTTP
    proxy's middleware), written before Ray starts its private cluster; on
    several nodes every `ray start` gets the same from .env and ray-node.sh.
    Plus src/ importable (the model server classes, the middleware)."""
    paths = [p for p in environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if SRC_DIR not in paths:
        environ["PYTHONPATH"] = os.pathsep.join([SRC_DIR, *paths])
    environ.update(llm_config.node_env(settings))
    environ[USAGE_STATS_VAR] = usage_stats(environ)


def usage_stats(environ: Mapping[str, str]) -> str:
    """RAY_USAGE_STATS_ENABLED for Ray: Ray's usage report probes cloud metadata
    addresses at start and reports to usage-stats.ray.io, so it is off ("0")
    unless .env (or the shell) sets it."""
    return (environ.get(USAGE_STATS_VAR) or "").strip() or "0"


def log(message: str) -> None:
    print(f"deploy.py: {message}", file=sys.stderr, flush=True)


def wait_for_nodes(expected: int, timeout_s: int, poll_s: float = 2.0, report_every_s: float = 10.0) -> None:
    """Block until `expected` Ray nodes are alive, or exit 1 after timeout_s, naming who is there."""
    import ray

    deadline = time.monotonic() + timeout_s
    next_report = 0.0
    while True:
        alive = sorted(n["NodeManagerAddress"] for n in ray.nodes() if n.get("Alive"))
        if len(alive) >= expected:
            log(f"{len(alive)} of {expected} nodes are up: {', '.join(alive)}")
            return
        now = time.monotonic()
        missing = expected - len(alive)
        if now >= deadline:
            log(f"gave up after NODE_WAIT_TIMEOUT={timeout_s}s: {missing} of {expected} nodes never joined "
                f"(joined: {', '.join(alive) or 'none'}). Check each worker's VLLM_HOST_IP, RAY_HEAD_HOST and "
                "RAY_AUTH_TOKEN, and that the head's GCS port is reachable.")
            raise SystemExit(1)
        if now >= next_report:
            log(f"waiting for {missing} more node(s) to join (joined: {', '.join(alive) or 'none'}); "
                f"{int(deadline - now)}s left")
            next_report = now + report_every_s
        time.sleep(poll_s)


class StopRequested(BaseException):
    """SIGTERM arrived (docker stop / compose down / local-stack down).

    A BaseException, like KeyboardInterrupt: the handler raises it wherever
    the main thread is, and no `except Exception` on the way (the status
    poll's, or one inside Ray) may swallow it. As an Exception it once
    turned a `compose down` into a status of 'unknown (StopRequested)': no
    drain, and Docker killed the container at its timeout."""


def raise_stop(signum: int, _frame: FrameType | None) -> None:
    raise StopRequested(signal.Signals(signum).name)


def watch_app(serve: Any, recovery: Recovery) -> str:
    """Poll the app's status until it has been unhealthy for too long; return why."""
    previous = "RUNNING"
    while True:
        time.sleep(STATUS_POLL_S)
        try:
            status = str(serve.status().applications[llm_config.APP_NAME].status)
        except Exception as err:  # noqa: BLE001 - the controller itself may be wedged
            status = f"unknown ({err.__class__.__name__})"
        status = status.rsplit(".", 1)[-1]
        if status != previous:
            log(f"application status: {previous} -> {status}")
            previous = status
        reason = recovery.observe(status == "RUNNING", time.monotonic(), status)
        if reason:
            return reason


def engine_kwargs_by_model(settings: Settings) -> dict[str, Mapping[str, Any]]:
    """Each model's ENGINE_KWARGS, keyed by how its problems are prefixed."""
    return {prefix: model.engine_kwargs for prefix, model in settings.labelled}


def checked_serving_args(settings: Settings) -> Any:
    """Ray's LLMServingArgs for these settings, checked by Ray and vLLM; logs how long it took."""
    started = time.monotonic()
    # vLLM logs to stdout on import; stdout is --dry-run's JSON only.
    with contextlib.redirect_stdout(sys.stderr):
        serving = config_check.serving_args(llm_config.serving_args(settings), engine_kwargs_by_model(settings))
    has_kwargs = any(m.engine_kwargs for m in settings.served)
    checked = "Ray Serve LLM's LLMConfig" + (" and vLLM's engine arguments" if has_kwargs else "")
    log(f"configuration checked with {checked} in {time.monotonic() - started:.1f}s")
    return serving


def write_serve_config(directory: Path, settings: Settings, environ: Mapping[str, str]) -> None:
    """The checked app as a Ray Serve config, validated by Ray's own schema, the
    environment its Ray nodes need, and both as a KubeRay RayService with the
    project's Nginx in front. Secrets are named, never written. Everything is
    built before the first file is (ConfigError: nothing written)."""
    import ray
    import yaml
    from ray.serve.schema import ServeDeploySchema

    import rayservice

    config = llm_config.serve_config(settings)
    ServeDeploySchema.parse_obj(config)
    config_yaml = yaml.safe_dump(config, sort_keys=False)
    usage = usage_stats(environ)
    cluster_env = {**llm_config.node_env(settings), USAGE_STATS_VAR: usage}
    if usage == "0":
        cluster_env[USAGE_REPORT_URL_VAR] = ""
    node_env = {"PYTHONPATH": SRC_DIR, **cluster_env}
    objects = rayservice.manifests(settings, dict(environ), config_yaml, cluster_env, ray.__version__)
    name = objects[0]["metadata"]["name"]
    secrets = "\n".join(f"#   {line}" for line in SECRETS_ON_A_CLUSTER)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / SERVE_CONFIG_FILE).write_text(
        f"# Ray Serve config written by `deploy.py --serve-config` from .env (and MODELS_FILE).\n"
        f"# Deploy it with `serve deploy {SERVE_CONFIG_FILE}` on a Ray cluster whose every node was\n"
        f"# started (`ray start`) with {NODE_ENV_FILE} in its environment and this project's image\n"
        f"# (src/ at {SRC_DIR}), or as KubeRay's serveConfigV2 ({RAYSERVICE_FILE}, docs/outgrow-compose.md).\n"
        f"# No secret is in this file. Each node's environment gets them from the cluster's secret store:\n"
        f"{secrets}\n" + config_yaml)
    (directory / NODE_ENV_FILE).write_text(
        f"# The environment of every Ray node (`ray start`) for {SERVE_CONFIG_FILE}; no secrets\n"
        f"# (see {SERVE_CONFIG_FILE}'s header for those). Written by `deploy.py --serve-config`.\n"
        + "".join(f"{key}={value}\n" for key, value in node_env.items()))
    (directory / RAYSERVICE_FILE).write_text(
        f"# KubeRay RayService (serveConfigV2 = {SERVE_CONFIG_FILE}) and the project's Nginx, written by\n"
        f"# `deploy.py --serve-config` from .env. Secrets are references: make them from .secrets with\n"
        f"#   kubectl create secret generic {name}-secrets --from-env-file=.secrets\n"
        f"#   kubectl create secret generic {name}-gateway-secrets --from-file=secrets=.secrets\n"
        f"# and the claims {name}-model-cache (and {name}-models for MODEL_SOURCE=/models/...) as\n"
        "# docs/outgrow-compose.md says.\n" + rayservice.dump(objects))
    log(f"wrote {directory / SERVE_CONFIG_FILE} (checked with Ray's ServeDeploySchema), {directory / NODE_ENV_FILE} "
        f"and {directory / RAYSERVICE_FILE}")


def config_error(problems: Sequence[str]) -> int:
    print("deploy.py: configuration error, nothing was started:", file=sys.stderr)
    for problem in problems:
        print(f"  - {problem}", file=sys.stderr)
    print("See .env for every variable, or run: python src/deploy.py --help", file=sys.stderr)
    return EXIT_CONFIG


def serve_forever(settings: Settings, serving: Any) -> None:
    """Start (or join) Ray, deploy the checked app and block."""
    import ray
    from ray import serve
    from ray.serve.llm import build_openai_app

    ray.init(**llm_config.ray_init_kwargs(settings))
    if settings.num_nodes > 1:
        wait_for_nodes(settings.num_nodes, settings.node_wait_timeout_s)
    serve.start(proxy_location=llm_config.PROXY_LOCATION, http_options=llm_config.http_options(settings))
    app = build_openai_app(serving)
    signal.signal(signal.SIGTERM, raise_stop)
    try:
        # Returns once the app runs; then watch it for the second bound.
        serve.run(app, name=llm_config.APP_NAME, route_prefix=llm_config.ROUTE_PREFIX, blocking=False)
        log(f"application {llm_config.APP_NAME!r} is running")
        reason = watch_app(serve, Recovery(settings.watchdog_recovery_timeout_s))
        log(f"watchdog: {reason}")
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        ray.shutdown()
        raise SystemExit(EXIT_UNRECOVERED)
    except StopRequested as stop:
        # Replicas finish in-flight requests (graceful_shutdown_timeout_s)
        # before Serve and the private Ray cluster go away.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        log(f"{stop}: draining in-flight requests for up to {llm_config.drain_timeout_s(settings):.0f}s")
        # Deleting the app first lets its replicas finish ongoing requests
        # while the HTTP proxy still carries their streams; serve.shutdown()
        # alone would stop the proxy at once and cut them.
        serve.delete(llm_config.APP_NAME)
        serve.shutdown()
        ray.shutdown()
        log("stopped cleanly")


def main(argv: Sequence[str] | None = None, environ: MutableMapping[str, str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    env: MutableMapping[str, str] = os.environ if environ is None else environ
    files = env_files(env)
    refusal = insecure_secrets(files[1])
    if refusal:
        print(f"deploy.py: configuration error, nothing was started:\n  - {refusal}", file=sys.stderr)
        return EXIT_CONFIG
    load_env_files(env, files, SERVER_SECRETS)
    drop_foreign_secrets(env)
    try:
        settings = parse_settings(env, read_models_file(env))
    except ConfigError as err:
        return config_error(err.problems)
    resolved: Mapping[str, Any] = llm_config.resolved(settings)
    if not (args.dry_run or args.serve_config):
        # The weights are findable (MODEL_SOURCE, the cache, or the Hub), or a
        # clear error now instead of a traceback from a replica later.
        missing = model_source.problems(settings, env)
        if missing:
            return config_error(missing)
        # Before Ray is first imported (the check below imports it).
        stash_hf_token(env, settings)
        export_ray_auth(env, settings)
        drop_empty_upstream_vars(env)
        export_for_workers(env, settings)
    try:
        serving = checked_serving_args(settings)
    except config_check.EngineCheckError as err:
        return config_error(err.problems)
    if args.dry_run:
        print(json.dumps(resolved, indent=2, sort_keys=True))
        return 0
    if args.serve_config:
        try:
            write_serve_config(Path(args.serve_config), settings, env)
        except ConfigError as err:
            return config_error(err.problems)
        return 0
    log("starting with " + json.dumps(resolved, sort_keys=True))
    serve_forever(settings, serving)
    return 0


if __name__ == "__main__":
    sys.exit(main())
