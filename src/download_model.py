#!/usr/bin/env python3
"""Download a model ahead of time, so the stack can start offline.

    scripts/download-model.sh                         # MODEL_ID from .env into the model-cache volume
    scripts/download-model.sh --dest models/qwen      # into ./models/qwen (MODEL_SOURCE=/models/qwen)
    scripts/download-model.sh                         # with MODELS_FILE: every entry without MODEL_SOURCE
    python src/download_model.py --model ID --revision REV --include '*.json' --include '*.safetensors'

huggingface_hub's snapshot_download does the work: an interrupted download
resumes where it stopped when run again, --include limits the files
(allow_patterns), and --revision pins a branch, tag or commit. Without --dest
the files go into the Hugging Face cache (HF_HOME; /cache/huggingface, the
model-cache volume, inside the image), where vLLM finds them with
HF_HUB_OFFLINE=1. The Hugging Face token comes from the environment or
.secrets (HF_TOKEN, read as deploy.py reads it) and is never printed.
HF_ENDPOINT points at a mirror.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import MutableMapping, Sequence

from dotenv_files import env_files, insecure_secrets, load_env_files
from model_source import offline
from settings import HF_TOKEN_NAMES, ConfigError, first_secret, parse_settings, read_models_file

EXIT_FAILED = 1
EXIT_USAGE = 2


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="download-model", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--model", default=None, help="Hugging Face model id (default: MODEL_ID from .env, or with "
                   "MODELS_FILE every entry's MODEL_ID that has no MODEL_SOURCE)")
    p.add_argument("--revision", default=None, help="branch, tag or commit to pin (default: main)")
    p.add_argument("--include", action="append", default=None, metavar="PATTERN",
                   help="only files matching this glob (repeatable), e.g. '*.safetensors'")
    p.add_argument("--dest", type=Path, default=None,
                   help="a plain folder to fill (for MODELS_DIR) instead of the Hugging Face cache")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None, environ: MutableMapping[str, str] | None = None) -> int:
    env = os.environ if environ is None else environ
    args = parse_args(sys.argv[1:] if argv is None else argv)
    dotenv_file, secrets_file = env_files(env)
    problem = insecure_secrets(secrets_file)
    if problem:
        print(f"download-model: {problem}", file=sys.stderr)
        return EXIT_USAGE
    load_env_files(env, (dotenv_file, secrets_file))
    try:
        models = models_to_download(args.model, env)
    except ConfigError as err:
        for problem in err.problems:
            print(f"download-model: {problem}", file=sys.stderr)
        return EXIT_USAGE
    if not models:
        print("download-model: no model: pass --model or set MODEL_ID in .env (with MODELS_FILE, every entry "
              "has a MODEL_SOURCE, so there is nothing to download)", file=sys.stderr)
        return EXIT_USAGE
    if (args.dest or args.revision) and len(models) > 1:
        option = "--dest is one folder" if args.dest else "--revision pins one model"
        print(f"download-model: {option}, and MODELS_FILE lists {len(models)} models to download "
              f"({', '.join(models)}): pass --model with it, once per model", file=sys.stderr)
        return EXIT_USAGE
    if offline(env):
        print("download-model: HF_HUB_OFFLINE is set, so nothing can be downloaded: run it with "
              "HF_HUB_OFFLINE= (empty) on a machine that reaches the Hub or HF_ENDPOINT", file=sys.stderr)
        return EXIT_USAGE
    for model in models:
        rc = download(model, args, env)
        if rc:
            return rc
    return 0


def models_to_download(model: str | None, env: MutableMapping[str, str]) -> list[str]:
    """--model; else with MODELS_FILE every entry's MODEL_ID that has no
    MODEL_SOURCE (validated as deploy.py validates it); else MODEL_ID."""
    if model:
        return [model]
    models_yaml = read_models_file(env)
    if models_yaml is None:
        return [m] if (m := (env.get("MODEL_ID") or "").strip()) else []
    return [entry.model_id for entry in parse_settings(env, models_yaml).served if not entry.model_source]


def download(model: str, args: argparse.Namespace, env: MutableMapping[str, str]) -> int:
    """One model into --dest or the Hugging Face cache; prints the path on success."""
    # Imported only now: huggingface_hub reads HF_ENDPOINT, HF_HOME... at import.
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    where = str(args.dest) if args.dest else f"the Hugging Face cache ({env.get('HF_HOME') or '~/.cache/huggingface'})"
    print(f"download-model: {model}" + (f"@{args.revision}" if args.revision else "") + f" into {where}",
          file=sys.stderr)
    try:
        path = snapshot_download(repo_id=model, revision=args.revision, allow_patterns=args.include,
                                 local_dir=args.dest, token=first_secret(env, HF_TOKEN_NAMES))
    except GatedRepoError:
        print(f"download-model: {model} is gated: accept its licence on the Hub and put HF_TOKEN in .secrets",
              file=sys.stderr)
        return EXIT_FAILED
    except RepositoryNotFoundError:
        print(f"download-model: {model} was not found (or is private: HF_TOKEN in .secrets)", file=sys.stderr)
        return EXIT_FAILED
    except RevisionNotFoundError:
        print(f"download-model: revision {args.revision!r} of {model} does not exist", file=sys.stderr)
        return EXIT_FAILED
    except (HfHubHTTPError, OSError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"download-model: download failed ({first}); run it again to resume", file=sys.stderr)
        return EXIT_FAILED
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
