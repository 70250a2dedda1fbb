"""Where the weights come from, checked before Ray starts.

A model that is neither at MODEL_SOURCE, nor in the Hugging Face cache, nor
reachable on the Hub (HF_ENDPOINT) would otherwise fail deep inside a Ray
replica, after minutes, in a traceback. This check names the variable to set.
It makes a network call only in the one case where the engine would make the
same call anyway: no MODEL_SOURCE, HF_HUB_OFFLINE unset and the model not
cached; then it fetches the model's config.json (into the cache, where vLLM
finds it next).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping

from settings import Settings

TRUE = ("1", "true", "yes", "on")
FIX = ("set MODEL_SOURCE to a folder with the weights (MODELS_DIR), or fill the cache ahead of time with "
       "scripts/download-model.sh")


def offline(environ: Mapping[str, str]) -> bool:
    return (environ.get("HF_HUB_OFFLINE") or "").strip().lower() in TRUE


def _cached(model_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(model_id, "config.json"), str)


def _fetch_config(model_id: str, token: str | None) -> str | None:
    """None when the Hub gave the model's config.json, else why not."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    try:
        hf_hub_download(model_id, "config.json", token=token)
    except GatedRepoError:
        return "is gated on the Hub: accept its licence there and put HF_TOKEN in .secrets"
    except RepositoryNotFoundError:
        return "was not found on the Hub (a typo, or a private model that needs HF_TOKEN in .secrets)"
    except (HfHubHTTPError, OSError) as err:  # httpx's connection errors are OSErrors too
        first = (str(err).splitlines() or [type(err).__name__])[0][:200]
        return f"is not in the Hugging Face cache and the Hub is unreachable ({first})"
    return None


def problems(settings: Settings, environ: Mapping[str, str], *, cached: Callable[[str], bool] = _cached,
             fetch_config: Callable[[str, str | None], str | None] = _fetch_config) -> list[str]:
    """Every served model whose weights cannot be found, one line each."""
    return [prefix + problem for prefix, model in settings.labelled
            for problem in _problems(model, environ, cached, fetch_config)]


def _problems(settings: Settings, environ: Mapping[str, str], cached: Callable[[str], bool],
              fetch_config: Callable[[str, str | None], str | None]) -> list[str]:
    source = settings.model_source
    if source:
        path = Path(source)
        if path.is_absolute() and not (path / "config.json").is_file():
            what = "holds no config.json" if path.is_dir() else "does not exist"
            return [f"MODEL_SOURCE={source} {what} on this machine: fix the path (Compose mounts MODELS_DIR at "
                    "/models) or fill it with scripts/download-model.sh --dest"]
        return []
    model = settings.model_id
    if cached(model):
        return []
    hub = environ.get("HF_ENDPOINT") or "https://huggingface.co"
    if offline(environ):
        return [f"MODEL_ID={model} is not in the Hugging Face cache (HF_HOME={environ.get('HF_HOME') or '~/.cache/huggingface'}) "
                f"and HF_HUB_OFFLINE=1 forbids downloading it: {FIX}; or unset HF_HUB_OFFLINE"]
    why = fetch_config(model, settings.hf_token)
    if why:
        return [f"MODEL_ID={model} {why} ({hub}): {FIX}; or fix the network (HTTPS_PROXY, HF_ENDPOINT)"]
    return []
