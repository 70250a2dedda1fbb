"""Skip Ray Serve LLM's per-node download task when there is nothing to download.

Before each engine start, Ray Serve LLM runs ``initialize_node``
(ray/llm/_internal/serve/utils/node_initialization_utils.py): one Ray task on
every node of the replica's placement group, each in a fresh worker process
that imports torch, transformers and Ray Serve LLM, to fetch the weights from
a cloud mirror. Without a mirror (no ``mirror_config``, and a model source
that is no s3://, gs://, abfss:// or azure:// path) that task only creates
torch's hub ``kernels`` folder and hands back the model id unchanged. On this
project's 2-core test machine it cost 7.6 s of every replica start
(docs/benchmarks.md, start-up).

``LocalWeightsCallback`` is Ray Serve LLM's own hook for this
(``LLMConfig.callback_config``; ``CallbackCtx.run_init_node``). It keeps
Ray's task whenever Ray would download something, and creates the folder
itself on the replica's node otherwise. Both names are internal to Ray;
tests/unit/test_node_init.py pins them and fails when a Ray upgrade changes
them.

Nothing here imports Ray at import time.
"""

from __future__ import annotations

import os
from typing import Any

from lazy_classes import lazy_attributes

# LLMConfig.callback_config's class, as the import path Ray's workers load
# from src/ (deploy.py and ray-node.sh put src/ on PYTHONPATH).
NODE_INIT_CALLBACK_CLS = "node_init:LocalWeightsCallback"


def nothing_to_download(engine_config: Any) -> bool:
    """Whether Ray's per-node task would only hand back the model id."""
    from ray.llm._internal.common.utils.cloud_utils import is_remote_path

    return engine_config.mirror_config is None and not is_remote_path(engine_config.actual_hf_model_id)


def local_weights_callback_class() -> type:
    """Ray's CallbackBase that skips the per-node task when nothing is remote."""
    from ray.llm._internal.common.callbacks.base import CallbackBase

    class LocalWeightsCallback(CallbackBase):  # type: ignore[misc, valid-type]
        async def on_before_node_init(self) -> None:
            if nothing_to_download(self.llm_config.get_engine_config()):
                import torch

                # The one thing Ray's skipped task would have done on this node.
                os.makedirs(os.path.join(torch.hub._get_torch_home(), "kernels"), exist_ok=True)
                self.ctx.run_init_node = False

    return LocalWeightsCallback


# Ray loads "node_init:LocalWeightsCallback" by attribute, in the replica.
__getattr__ = lazy_attributes(globals(), {"LocalWeightsCallback": local_weights_callback_class})
