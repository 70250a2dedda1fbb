"""Check the configuration with Ray's and vLLM's own models before anything starts.

settings.py checks each variable without importing Ray; llm_config.py turns
Settings into plain data. This module is the step after: it builds the real
``ray.serve.llm.LLMConfig`` and ``LLMServingArgs`` objects from that data
(deploy.py serves exactly these objects, and --dry-run builds them too), and
checks ENGINE_KWARGS' keys against vLLM's engine arguments, naming the closest
valid one for a typo.

Cost, measured on 2 cores: about 5 s, nearly all of it importing
ray.serve.llm (which imports vLLM and torch); reading vLLM's engine arguments
adds nothing measurable once that is loaded, and they are read only when
ENGINE_KWARGS is not empty. A real start imports the same modules anyway, so
it costs a start nothing extra; `--dry-run` takes about 6.5 s in all. The fast
path never pays it: `--help` and a bad variable (settings.py) answer in about
0.05 s, before anything of Ray or vLLM is imported.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Collection, Mapping


class EngineCheckError(Exception):
    """The configuration Ray or vLLM would reject, one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def engine_kwargs_problems(kwargs: Mapping[str, Any], valid: Collection[str]) -> list[str]:
    """ENGINE_KWARGS keys that are not vLLM engine arguments, with the closest valid name."""
    problems: list[str] = []
    for key in kwargs:
        if key in valid:
            continue
        close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}?" if close else "see `vllm serve --help` for the engine arguments"
        problems.append(f"ENGINE_KWARGS key {key!r} is not a vLLM engine argument: {hint}")
    return problems


def vllm_engine_arg_names() -> frozenset[str]:
    """Every engine argument of the installed vLLM (AsyncEngineArgs' fields)."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    return frozenset(f.name for f in dataclasses.fields(AsyncEngineArgs))


# LLMConfig fields and the variables of ours that set them (llm_config.py).
FIELD_VARIABLES: dict[str, str] = {
    "accelerator_type": "ACCELERATOR_TYPE",
    "accelerator_config": "DEVICE",
    "model_loading_config": "MODEL_ID / MODEL_SOURCE / SERVED_MODEL_NAME",
    "engine_kwargs": "ENGINE_KWARGS",
    "deployment_config": "MIN_REPLICAS / MAX_REPLICAS / TARGET_ONGOING_REQUESTS",
    "placement_group_config": "PLACEMENT_STRATEGY / TENSOR_PARALLEL_SIZE / PIPELINE_PARALLEL_SIZE",
    "ingress_deployment_config": "DEVICE",
}


def _pydantic_problems(err: Exception) -> list[str]:
    errors = getattr(err, "errors", None)
    if not callable(errors):
        return [f"Ray Serve LLM rejected the configuration: {err}"]
    problems = []
    for item in errors():
        loc = [str(part) for part in item.get("loc", ())]
        where = ".".join(loc) or "(config)"
        variable = FIELD_VARIABLES.get(loc[0], "") if loc else ""
        prefix = f"{variable}: " if variable else ""
        problems.append(f"{prefix}Ray Serve LLM rejected {where}: {item.get('msg')}")
    return problems


def serving_args(args: Mapping[str, Any], user_engine_kwargs: Mapping[str, Mapping[str, Any]]) -> Any:
    """Ray's LLMServingArgs (with real LLMConfig objects) for llm_config.serving_args' data.

    user_engine_kwargs: each model's ENGINE_KWARGS, keyed by the prefix its
    problems get ("" for the single-model variables, "MODELS_FILE entry N
    (name): " otherwise). Raises EngineCheckError naming every problem:
    unknown ENGINE_KWARGS keys first (checked only when there are any), then
    Ray's own validation.
    """
    if any(user_engine_kwargs.values()):
        valid = vllm_engine_arg_names()
        problems = [prefix + problem for prefix, kwargs in user_engine_kwargs.items()
                    for problem in engine_kwargs_problems(kwargs, valid)]
        if problems:
            raise EngineCheckError(problems)
    from pydantic import ValidationError
    from ray.serve.llm import LLMConfig, LLMServingArgs

    try:
        configs = [LLMConfig(**config) for config in args["llm_configs"]]
        return LLMServingArgs(**{**args, "llm_configs": configs})
    except (ValidationError, ValueError, TypeError) as err:
        raise EngineCheckError(_pydantic_problems(err)) from None
