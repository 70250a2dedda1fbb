#!/usr/bin/env python3
"""Download a model ahead of time, so the stack can start offline.

    scripts/download-model.sh                         # MODEL_ID from .env into the model-cache volume
    scripts/download-model.sh --dest models/qwen      # into ./models/qwen (MODEL_SOURCE=/models/qwen)
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

from deploy import env_files, insecure_secrets, load_env_files
from model_source import offline
from settings import HF_TOKEN_NAMES, first_secret

EXIT_FAILED = 1
EXIT_USAGE = 2


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="download-model", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--model", default=None, help="Hugging Face model id (default: MODEL_ID from .env)")
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
    model = args.model or (env.get("MODEL_ID") or "").strip()
    if not model:
        several = " (with MODELS_FILE, once per entry's MODEL_ID)" if (env.get("MODELS_FILE") or "").strip() else ""
        print(f"download-model: no model: pass --model{several} or set MODEL_ID in .env", file=sys.stderr)
        return EXIT_USAGE
    if offline(env):
        print("download-model: HF_HUB_OFFLINE is set, so nothing can be downloaded: run it with "
              "HF_HUB_OFFLINE= (empty) on a machine that reaches the Hub or HF_ENDPOINT", file=sys.stderr)
        return EXIT_USAGE

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
