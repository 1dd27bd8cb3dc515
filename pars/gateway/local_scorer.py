"""The gateway's in-process scorer (GATEWAY_SCORER=local): the predictor service's own model worker and
batcher inside the gateway, configured by the service's PREDICTOR_* settings."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor


class LocalScorer:
    """The ranker in this process, loaded as the predictor service loads it (PREDICTOR_* settings) and fed
    through the service's DynamicBatcher and InferenceEngine, so concurrent arrivals share forward passes."""

    def __init__(self, predictor_settings=None) -> None:  # pars.serving.settings.Settings; None: from env
        self._settings = predictor_settings
        self.engine = None
        self.runner = None
        self._tokenizer_thread: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        # Imported here: the remote and neutral gateways need neither torch nor the model code.
        import torch
        from starlette.concurrency import run_in_threadpool

        from pars.serving.batcher import build_runner
        from pars.serving.engine import load_scorer
        from pars.serving.observability import Metrics
        from pars.serving.settings import Settings

        s = self._settings if self._settings is not None else Settings()
        torch.set_num_threads(s.threads_per_worker())
        scorer = await run_in_threadpool(load_scorer, s)
        metrics = Metrics()
        self.engine, self.runner = build_runner(scorer, s, metrics, batching=True)
        self._tokenizer_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pars-gateway-tokenize")
        self.runner.start()
        if s.warmup:  # before the gateway takes requests: the first ones would otherwise all time out
            await self.engine.run(self.engine.warm_up)

    async def score(self, text: str) -> float:
        ids = await asyncio.get_running_loop().run_in_executor(self._tokenizer_thread, self.engine.encode, [text])
        (value,) = await self.runner.score(ids)
        return value

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.close()
        if self.engine is not None:
            self.engine.close()
        if self._tokenizer_thread is not None:
            self._tokenizer_thread.shutdown(wait=True)
