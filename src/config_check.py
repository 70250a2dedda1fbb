"""Check the configuration with Ray's and vLLM's own models before anything starts.

settings.py checks each variable without importing Ray; llm_config.py turns
Settings into plain data. This module is the step after: it builds the real
``ray.serve.llm.LLMConfig`` and ``LLMServingArgs`` objects from that data
(deploy.py serves exactly these objects, and --dry-run builds them too), and
checks ENGINE_KWARGS' keys against vLLM's engine and frontend arguments (Ray
splits them between the engine and its OpenAI layer the same way), naming the
closest valid one for a typo, and the tool-call and reasoning parsers against
the ones vLLM registers.

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

from settings import ROUTERS


class EngineCheckError(Exception):
    """The configuration Ray or vLLM would reject, one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def closest(name: str, valid: Collection[str], otherwise: str) -> str:
    close = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}?" if close else otherwise


def engine_kwargs_problems(kwargs: Mapping[str, Any], valid: Collection[str],
                           parsers: Mapping[str, Collection[str]] | None = None) -> list[str]:
    """ENGINE_KWARGS keys that are not vLLM engine or frontend arguments, with
    the closest valid name; parser names vLLM does not register (parsers:
    argument -> registered names); auto tool choice without its parser."""
    problems: list[str] = []
    for key in kwargs:
        if key not in valid:
            hint = closest(key, valid, "see `vllm serve --help` for the arguments")
            problems.append(f"ENGINE_KWARGS key {key!r} is not a vLLM engine or frontend argument: {hint}")
    for key, names in (parsers or {}).items():
        value = kwargs.get(key)
        if value is not None and value not in names:
            hint = closest(str(value), names, "expected one of " + ", ".join(sorted(names)))
            problems.append(f"ENGINE_KWARGS {key}={value!r} is not a parser this vLLM knows: {hint}")
    if kwargs.get("enable_auto_tool_choice") and not kwargs.get("tool_call_parser"):
        problems.append("ENGINE_KWARGS enable_auto_tool_choice needs tool_call_parser too (e.g. \"hermes\"): "
                        "vLLM refuses to start without it.")
    return problems


def vllm_arg_names() -> frozenset[str]:
    """Every argument ENGINE_KWARGS may hold with the installed vLLM: the
    engine's (AsyncEngineArgs) and the OpenAI frontend's (FrontendArgs), the
    two sets Ray Serve LLM splits engine_kwargs into."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.entrypoints.launchers.cli_args import FrontendArgs

    return frozenset(f.name for cls in (AsyncEngineArgs, FrontendArgs) for f in dataclasses.fields(cls))


def router_problems(configs: list[Mapping[str, Any]], has_dynamo: bool) -> list[str]:
    """REQUEST_ROUTER=kv-aware needs ai-dynamo (Ray's KVTokenTracker imports
    dynamo.llm, and degrades to random routing without it)."""
    kv_aware = ROUTERS["kv-aware"]
    names = [c["model_loading_config"]["model_id"] for c in configs
             if c["deployment_config"].get("request_router_config", {}).get("request_router_class") == kv_aware]
    if names and not has_dynamo:
        return [f"REQUEST_ROUTER=kv-aware (model {', '.join(names)}) needs the ai-dynamo package, which this image "
                "does not include: Ray's KV-aware router would fall back to random routing. Use prefix-cache."]
    return []


def vllm_parsers() -> dict[str, frozenset[str]]:
    """The tool-call and reasoning parsers the installed vLLM registers."""
    from vllm.reasoning import ReasoningParserManager
    from vllm.tool_parsers import ToolParserManager

    return {"tool_call_parser": frozenset(ToolParserManager.list_registered()),
            "reasoning_parser": frozenset(ReasoningParserManager.list_registered())}


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
        valid = vllm_arg_names()
        parsers = vllm_parsers() if any(k.endswith("_parser") for kw in user_engine_kwargs.values() for k in kw) else {}
        problems = [prefix + problem for prefix, kwargs in user_engine_kwargs.items()
                    for problem in engine_kwargs_problems(kwargs, valid, parsers)]
        if problems:
            raise EngineCheckError(problems)
    import importlib.util

    problems = router_problems(args["llm_configs"], importlib.util.find_spec("dynamo") is not None)
    if problems:
        raise EngineCheckError(problems)
    from pydantic import ValidationError
    from ray.serve.llm import LLMConfig, LLMServingArgs

    try:
        configs = [LLMConfig(**config) for config in args["llm_configs"]]
        return LLMServingArgs(**{**args, "llm_configs": configs})
    except (ValidationError, ValueError, TypeError) as err:
        raise EngineCheckError(_pydantic_problems(err)) from None
