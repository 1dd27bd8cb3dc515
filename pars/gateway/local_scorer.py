"""The gateway's in-process scorer (GATEWAY_SCORER=local): the predictor service's own model worker and
batcher inside the gateway, configured by the service's PREDICTOR_* settings, and reloaded as the service
reloads (pars/serving/reload.py): `await scorer.reload()`, or SIGHUP to the gateway process."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the remote and neutral gateways import neither torch nor the model code
    from pars.serving.reload import RankerHolder
    from pars.serving.settings import Settings


class LocalScorer:
    """The ranker in this process, loaded as the predictor service loads it (PREDICTOR_* settings) and fed
    through the service's DynamicBatcher and InferenceEngine, so concurrent arrivals share forward passes.

    `ranker_id` names the ranker in use (the service's x-pars-ranker-id) and `score_tagged` the one behind each
    score: the gateway starts a fresh score window when it changes. `reload()` swaps in a new ranker without a
    pause; `reload_on_sighup` (on by default) makes SIGHUP do it, where the gateway runs in the main thread."""

    def __init__(self, predictor_settings: Settings | None = None, reload_on_sighup: bool = True) -> None:
        self._settings = predictor_settings  # None: from the environment
        self._reload_on_sighup = reload_on_sighup
        self.holder: RankerHolder | None = None
        self._tokenizer_thread: ThreadPoolExecutor | None = None

    @property
    def ranker_id(self) -> str | None:
        return self.holder.current.ranker_id if self.holder is not None else None

    @property
    def engine(self):  # the ranker in use's, for callers of the earlier attributes
        return self.holder.current.engine if self.holder is not None else None

    @property
    def runner(self):
        return self.holder.current.runner if self.holder is not None else None

    async def start(self) -> None:
        # Imported here: the remote and neutral gateways need neither torch nor the model code.
        import torch

        from pars.serving.observability import Metrics
        from pars.serving.reload import RankerHolder
        from pars.serving.settings import Settings

        s = self._settings if self._settings is not None else Settings()
        torch.set_num_threads(s.threads_per_worker())
        holder = RankerHolder(s, Metrics(), batching=True)
        await holder.start()
        self.holder = holder
        self._tokenizer_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pars-gateway-tokenize")
        if s.warmup:  # before the gateway takes requests: the first ones would otherwise all time out
            await holder.warm_up_current()
        if self._reload_on_sighup:
            holder.reload_on_sighup()

    async def score(self, text: str) -> float:
        return (await self.score_tagged(text))[0]

    async def score_tagged(self, text: str) -> tuple[float, str]:
        """The score and the id of the ranker that computed it. Tokenized and scored by the ranker in use when
        the call began, even if a reload swaps it meanwhile: such a score then carries the old id, not
        `ranker_id`'s, so the gateway does not take it for one of the new ranker's."""
        with self.holder.use() as gen:
            ids = await asyncio.get_running_loop().run_in_executor(self._tokenizer_thread, gen.engine.encode, [text])
            (value,) = await gen.runner.score(ids)
        return value, gen.ranker_id

    async def reload(self, model_path: str | None = None) -> str:
        """Load `model_path` (None: the current path, re-read from disk) beside the ranker in use, warm it up
        and swap it in; the new ranker_id. A reload in progress is waited for. A checkpoint that fails is
        pars.serving.reload.ReloadError (its `message` is one line) and the ranker in use keeps scoring."""
        result = await self.holder.reload(model_path, wait=True)
        return result.current.ranker_id

    async def close(self) -> None:
        if self.holder is not None:
            await self.holder.close()
        if self._tokenizer_thread is not None:
            self._tokenizer_thread.shutdown(wait=True)
