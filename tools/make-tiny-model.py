#!/usr/bin/env python3
"""Build a tiny, randomly initialised Llama model for offline CPU testing.

The result is a complete Hugging Face model folder (config, safetensors
weights, byte-level BPE tokenizer with a ChatML chat template, generation
config) that vLLM's CPU backend can load and serve in seconds. Nothing is
downloaded: the tokenizer is trained locally on a small built-in corpus and the
weights come from a seeded random generator, so the same seed always gives the
same bytes. The model produces gibberish; it exists to exercise the serving
stack (Ray Serve LLM, vLLM, Nginx) without a GPU or the Hugging Face Hub.

Usage:
    python tools/make-tiny-model.py OUT_DIR [--seed N] [--force]

If OUT_DIR already holds a complete model built by this script with the same
seed and recipe, the script exits 0 at once. The model is built in a temporary
folder next to OUT_DIR and renamed into place, so an interrupted build never
leaves a half-written model behind.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Bump whenever the output of a given seed changes (architecture, corpus,
# tokenizer settings, init scheme): existing folders are then rebuilt.
RECIPE_VERSION = 2
DEFAULT_SEED = 0
MARKER_NAME = ".tiny-model-complete"

# Files that must all exist for a folder to count as a complete model.
REQUIRED_FILES: tuple[str, ...] = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
)

# Architecture. Llama with head_dim 32 and GQA (2 query heads, 1 KV head) is a
# shape vLLM's CPU attention backend supports.
HIDDEN_SIZE = 64
NUM_LAYERS = 2
NUM_ATTENTION_HEADS = 2
NUM_KEY_VALUE_HEADS = 1
HEAD_DIM = 32
INTERMEDIATE_SIZE = 128
# Long enough for .env's MAX_MODEL_LEN (RoPE: no weights depend on it).
MAX_POSITION_EMBEDDINGS = 32768
ROPE_THETA = 10000.0
RMS_NORM_EPS = 1e-5
INIT_STD = 0.02
DTYPE = "float32"

# Tokenizer. Special tokens come first, so their ids are 0..3.
TARGET_VOCAB_SIZE = 1024
PAD_TOKEN = "<|endoftext|>"
BOS_TOKEN = "<|begin_of_text|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"  # end of a chat turn; also the EOS token
SPECIAL_TOKENS: tuple[str, ...] = (PAD_TOKEN, BOS_TOKEN, IM_START, IM_END)

# ChatML. Content may be a plain string or a list of OpenAI-style parts, of
# which only the text parts are kept.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}"
    "{{- message['content'] -}}"
    "{%- elif message['content'] is not none -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- endif -%}"
)

CORPUS: tuple[str, ...] = (
    "The quick brown fox jumps over the lazy dog. A small model is a useful "
    "thing to have when you want to test a serving stack without waiting for "
    "large downloads. It loads in seconds, it answers at once, and nobody "
    "expects it to say anything sensible.",
    "Once upon a time there was a little server that lived behind a proxy. "
    "Every morning it woke up, loaded its weights, and listened on a port for "
    "requests. Some requests asked for a short answer, others wanted a long "
    "story streamed back one token at a time.",
    "Hello! How are you today? I am fine, thank you. What would you like to "
    "know? Please tell me about the weather, the time, and the news. Sure, "
    "here is a summary of what happened this week in the world of computers.",
    "Language models read text as tokens. A tokenizer splits words into "
    "pieces, maps each piece to a number, and turns numbers back into text. "
    "Byte-level tokenizers can encode any string, including emoji, accents, "
    "and symbols such as @, #, $, %, & and *.",
    "The system prompt tells the assistant how to behave. The user asks a "
    "question, and the assistant writes a reply. Good replies are clear, "
    "short, and helpful. When the answer is not known, it is better to say so "
    "than to make something up.",
    "Numbers matter too: 0 1 2 3 4 5 6 7 8 9 10 100 1000 2024 3.14 42. "
    "Code often looks like this: def main() -> None: print('hello, world'); "
    "for i in range(10): x = x + i. JSON looks like {\"key\": \"value\"}.",
    "Later that evening the engineers gathered in the kitchen to discuss the "
    "deployment. One of them had written a checklist: build the image, start "
    "the cluster, check the health endpoint, send a request, read the logs, "
    "and measure the latency of every response before going home.",
    "Spring arrived early this year. Birds returned to the garden, flowers "
    "opened along the fence, and children played football in the park until "
    "dark. Their parents sat on benches, talking about holidays, schools, "
    "prices, and the new library that opened near the station.",
    "A careful reader checks the facts, compares several sources, and notices "
    "when a claim sounds too good to be true. Science works the same way: an "
    "experiment is repeated, measurements are recorded, and conclusions change "
    "when better evidence appears.",
    "Cooking is simple chemistry. Heat the pan, add oil, onions and garlic, "
    "then tomatoes, salt and pepper. Let the sauce simmer for twenty minutes "
    "while the pasta boils. Serve it warm with fresh basil and grated cheese.",
    "Monday, Tuesday, Wednesday, Thursday, Friday, Saturday and Sunday are "
    "the days of the week. January, February, March, April, May, June, July, "
    "August, September, October, November and December are the months.",
    "The ship left the harbour at dawn. Sailors checked the ropes, the captain "
    "studied the maps, and a cold wind pushed the vessel north towards the "
    "islands, where lighthouses guided travellers through dangerous water.",
    "Rivers run to the sea, mountains rise above the clouds, and forests "
    "grow slowly over many years. People build cities, roads, bridges and "
    "machines, and they write down what they learn so that others can read it "
    "later.",
)


def marker_payload(seed: int) -> dict[str, int]:
    """Content of the completion marker for a build with this seed."""
    return {"seed": seed, "recipe_version": RECIPE_VERSION}


def read_marker(model_dir: Path) -> dict[str, Any] | None:
    """The parsed completion marker of model_dir, or None if absent/invalid."""
    try:
        data = json.loads((model_dir / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_complete(model_dir: Path, seed: int) -> bool:
    """True if model_dir holds a complete build of this recipe and seed."""
    if not model_dir.is_dir():
        return False
    if read_marker(model_dir) != marker_payload(seed):
        return False
    return all((model_dir / name).is_file() for name in REQUIRED_FILES)


@contextlib.contextmanager
def locked_dir(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on a directory (serialises concurrent builds)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def training_corpus() -> list[str]:
    """Corpus the tokenizer is trained on: the prose plus chat-shaped text."""
    chat_lines = [
        f"{IM_START}system\nYou are a helpful assistant.{IM_END}",
        f"{IM_START}user\nHello, who are you?{IM_END}",
        f"{IM_START}assistant\nI am a tiny test model.{IM_END}",
    ]
    return [*CORPUS, *chat_lines]


def build_tokenizer(out_dir: Path) -> Any:
    """Train a byte-level BPE tokenizer, save it to out_dir and return it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=TARGET_VOCAB_SIZE,
        min_frequency=1,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(training_corpus(), trainer=trainer)

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS_TOKEN,
        eos_token=IM_END,
        pad_token=PAD_TOKEN,
        unk_token=None,
        model_max_length=MAX_POSITION_EMBEDDINGS,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(out_dir)
    return tokenizer


def build_model(out_dir: Path, tokenizer: Any, seed: int) -> None:
    """Create the seeded random Llama weights and configs in out_dir."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    bos_id = tokenizer.convert_tokens_to_ids(BOS_TOKEN)
    eos_id = tokenizer.convert_tokens_to_ids(IM_END)
    pad_id = tokenizer.convert_tokens_to_ids(PAD_TOKEN)
    config = LlamaConfig(
        architectures=["LlamaForCausalLM"],
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN_SIZE,
        intermediate_size=INTERMEDIATE_SIZE,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=NUM_ATTENTION_HEADS,
        num_key_value_heads=NUM_KEY_VALUE_HEADS,
        head_dim=HEAD_DIM,
        hidden_act="silu",
        max_position_embeddings=MAX_POSITION_EMBEDDINGS,
        initializer_range=INIT_STD,
        rms_norm_eps=RMS_NORM_EPS,
        rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA},
        tie_word_embeddings=False,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        dtype=DTYPE,
    )
    model = LlamaForCausalLM(config)

    # Overwrite whatever transformers' init produced with values drawn from our
    # own generator in a fixed (sorted) order, so the weights depend only on
    # the seed and not on transformers' init order or the global RNG.
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            else:
                param.normal_(mean=0.0, std=INIT_STD, generator=generator)
    model = model.to(getattr(torch, DTYPE))

    model.generation_config = GenerationConfig(
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )
    model.save_pretrained(out_dir, safe_serialization=True)


def build_into(out_dir: Path, seed: int) -> None:
    """Build the complete model (marker last) into the existing folder out_dir."""
    tokenizer = build_tokenizer(out_dir)
    build_model(out_dir, tokenizer, seed)
    missing = [name for name in REQUIRED_FILES if not (out_dir / name).is_file()]
    if missing:
        raise RuntimeError(f"build produced no {', '.join(missing)} in {out_dir}")
    for path in out_dir.iterdir():
        path.chmod(0o644)  # the weights are written 0600; let other users read them
    (out_dir / MARKER_NAME).write_text(
        json.dumps(marker_payload(seed)) + "\n", encoding="utf-8"
    )


def remove_stale_work_dirs(parent: Path, name: str) -> None:
    """Delete leftovers of killed builds (call only while holding the lock)."""
    for pattern in (f".{name}.building-*", f".{name}.old-*"):
        for stale in parent.glob(pattern):
            shutil.rmtree(stale, ignore_errors=True)


def make_tiny_model(out_dir: Path, seed: int, force: bool) -> bool:
    """Ensure out_dir holds the tiny model for seed. True if it was (re)built.

    Raises FileExistsError if out_dir is a non-empty folder this script did not
    create and force is False.
    """
    out_dir = out_dir.resolve()  # a symlinked OUT_DIR: replace its target
    if not force and is_complete(out_dir, seed):
        return False
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a directory")

    parent = out_dir.parent
    parent.mkdir(parents=True, exist_ok=True)
    with locked_dir(parent):
        # Another process may have finished the same build while we waited.
        if not force and is_complete(out_dir, seed):
            return False
        if (
            not force
            and out_dir.is_dir()
            and read_marker(out_dir) is None
            and any(out_dir.iterdir())
        ):
            raise FileExistsError(
                f"{out_dir} is not empty and was not made by this script; "
                "pass --force to replace it"
            )
        remove_stale_work_dirs(parent, out_dir.name)

        work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.building-", dir=parent))
        try:
            build_into(work, seed)
            work.chmod(0o755)  # mkdtemp creates 0700; let other users read it
            if out_dir.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=parent))
                old.rmdir()
                out_dir.rename(old)
                work.rename(out_dir)
                shutil.rmtree(old, ignore_errors=True)
            else:
                work.rename(out_dir)
        finally:
            if work.exists():
                shutil.rmtree(work, ignore_errors=True)
    return True


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Build a tiny random-weight Llama model (with a locally trained "
            "byte-level BPE tokenizer and a ChatML chat template) into OUT_DIR, "
            "for testing the serving stack offline on CPU. Downloads nothing."
        ),
    )
    parser.add_argument("out_dir", metavar="OUT_DIR", type=Path, help="folder to create")
    parser.add_argument(
        "--seed",
        type=int,
        default=DEFAULT_SEED,
        help=f"seed of the random weights (default: {DEFAULT_SEED})",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="rebuild even if OUT_DIR already holds a complete model, and "
        "replace OUT_DIR even if this script did not create it",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Before transformers is imported: never reach for the Hub.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

    started = time.monotonic()
    try:
        built = make_tiny_model(args.out_dir, args.seed, args.force)
    except FileExistsError as exc:
        print(f"make-tiny-model: {exc}", file=sys.stderr)
        return 1
    out = args.out_dir.resolve()
    if built:
        elapsed = time.monotonic() - started
        print(f"make-tiny-model: built {out} (seed {args.seed}) in {elapsed:.1f}s", file=sys.stderr)
    else:
        print(f"make-tiny-model: {out} is already complete (seed {args.seed})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
