#!/usr/bin/env python3
"""Serve one model as an OpenAI-compatible API with Ray Serve LLM.

Reads the environment (plus .env and .secrets next to the repo root when they
exist; variables already set win), validates all of it before importing Ray,
then builds the LLMConfig and the OpenAI app and runs it with serve.run.

Exit codes: 0 ok (or --dry-run), 2 bad configuration (nothing started).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Mapping, MutableMapping, Sequence

import llm_config
from settings import HF_TOKEN_NAMES, ConfigError, Settings, help_text, parse_settings

REPO_ROOT = Path(__file__).resolve().parent.parent
ENV_FILES = (REPO_ROOT / ".env", REPO_ROOT / ".secrets")
EXIT_CONFIG = 2


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
        help="validate, print the resolved configuration (secrets redacted) and exit without starting anything",
    )
    return parser.parse_args(argv)


def load_env_files(environ: MutableMapping[str, str], files: Sequence[Path] = ENV_FILES) -> None:
    """Fill in variables from .env/.secrets; values already in environ win."""
    from dotenv import dotenv_values

    for path in files:
        if path.is_file():
            for key, value in dotenv_values(path).items():
                if value is not None and key not in environ:
                    environ[key] = value


def export_hf_token(environ: MutableMapping[str, str], settings: Settings) -> None:
    """Expose the token under every name huggingface_hub and vLLM look for.

    It reaches the engine through process inheritance, never through Ray's
    runtime_env (which Serve would show in its deployment details).
    """
    if settings.hf_token:
        for name in HF_TOKEN_NAMES[:2]:
            environ[name] = settings.hf_token


def serve_forever(settings: Settings) -> None:
    """Start (or join) Ray, deploy the app and block. The only place Ray is imported."""
    import ray
    from ray import serve
    from ray.serve.llm import build_openai_app

    ray.init(**llm_config.ray_init_kwargs(settings))
    serve.start(http_options=llm_config.http_options(settings))
    app = build_openai_app(llm_config.serving_args(settings))
    serve.run(app, name=llm_config.APP_NAME, route_prefix=llm_config.ROUTE_PREFIX, blocking=True)


def main(argv: Sequence[str] | None = None, environ: MutableMapping[str, str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    env: MutableMapping[str, str] = os.environ if environ is None else environ
    load_env_files(env)
    try:
        settings = parse_settings(env)
    except ConfigError as err:
        print("deploy.py: configuration error, nothing was started:", file=sys.stderr)
        for problem in err.problems:
            print(f"  - {problem}", file=sys.stderr)
        print("See .env for every variable, or run: python src/deploy.py --help", file=sys.stderr)
        return EXIT_CONFIG
    resolved: Mapping[str, Any] = llm_config.resolved(settings)
    if args.dry_run:
        print(json.dumps(resolved, indent=2, sort_keys=True))
        return 0
    print("deploy.py: starting with " + json.dumps(resolved, sort_keys=True), file=sys.stderr, flush=True)
    export_hf_token(env, settings)
    serve_forever(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
