"""Service settings, read once from PREDICTOR_* environment variables at start-up."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def physical_cores() -> int:
    """Physical cores this process may run on (hyper-threads counted once); at least 1."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return max(1, (os.cpu_count() or 2) // 2)
    cores = set()
    for cpu in cpus:
        try:
            with open(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list", encoding="ascii") as f:
                cores.add(f.read().strip())
        except OSError:
            cores.add(str(cpu))
    return max(1, len(cores))


_CONFIG = "the checkpoint's ranker_config.json"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PREDICTOR_", protected_namespaces=())

    # The ranker: a checkpoint (the original release's default path), or an exported directory.
    model_path: str = "../predictor_train/outputs/alpaca_gpt4_bert/best_model.pt"
    # How the checkpoint is scored. None (unset): as its ranker_config.json says (training writes it beside
    # the checkpoint; pars/model/ranker_config.py), else the original release's settings (bert-base-uncased,
    # 128 tokens, head, pooler). Set one only for a checkpoint that does not record it: contradicting the
    # checkpoint's own stops start-up. model_name: the encoder (hub id, local directory or offline alias).
    model_name: str | None = Field(default=None, description=f"{_CONFIG} (else bert-base-uncased)")
    max_length: int | None = Field(default=None, ge=1, le=4096, description=f"{_CONFIG} (else 128)")
    # how a longer prompt is cut (pars/model/truncation.py)
    truncation: Literal["head", "middle"] | None = Field(default=None, description=f"{_CONFIG} (else head)")
    # how the tokens become one vector (pars/model/ranker.py)
    pooling: Literal["pooler", "mean"] | None = Field(default=None, description=f"{_CONFIG} (else pooler)")
    device: str | None = Field(default=None, description="cuda when available, else cpu")

    # Inference. backend: torch, or the CPU fast path through ONNX Runtime (pars/model/backends.py):
    # onnx (fp32, same scores as torch) or onnx-int8 (int8 weights, close ranking); exported once, cached.
    backend: Literal["torch", "onnx", "onnx-int8"] = "torch"
    onnx_cache_dir: str | None = None  # None: $XDG_CACHE_HOME/pars/onnx or ~/.cache/pars/onnx
    # ONNX Runtime's workers busy-wait between operators: faster passes, but CPU taken from the HTTP layer.
    onnx_spin: bool = False
    # auto: float16 on CUDA, bfloat16 autocast on CPUs with AMX or AVX512-BF16, float32 elsewhere and for the
    # ONNX backends (pars/model/precision.py says what the rule rests on). float16: CUDA only; bfloat16: cast
    # weights on CUDA, autocast on CPU.
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    # Intra-op threads in all. None: one fewer than the physical cores (at least 1): the HTTP layer, the tokenizer
    # and the batcher need a core that torch's spinning workers do not take. On the 2-core reference machine one
    # thread beat two at 1, 8 and 32 clients (p50 at 1 client 26 against 36 ms; docs/serving-measurements.md).
    num_threads: int | None = Field(default=None, ge=1, le=1024, description="physical cores - 1 (at least 1)")
    # Forward passes that may run at once, each on its own thread with num_threads / workers intra-op threads.
    # Small passes use several threads poorly, but a long prompt's pass on fewer threads takes longer: here
    # 2 workers gave 25 % more prompts/s and a worse p99 at 8 clients (docs/serving-measurements.md).
    inference_workers: int = Field(default=1, ge=1, le=64)
    warmup: bool = True  # a few forward passes before /ready turns 200

    # Dynamic batching (off: one forward pass per request, as the original release).
    batching: bool = True
    max_batch_size: int = Field(default=64, ge=1, le=4096)  # prompts per forward pass
    max_batch_tokens: int = Field(default=8192, ge=1)  # padded tokens per forward pass
    # Fixed cost of one forward pass in padded-token equivalents: a batch is split into length-sorted
    # sub-batches only where that saves more padded tokens than this per extra pass.
    # None: measured during the warm-up on this device and backend (pars/serving/batcher.py).
    forward_overhead_tokens: int | None = Field(default=None, ge=0)
    # CPU: give freed heap memory back to the OS at most this often (glibc malloc_trim; 0: never), so
    # RSS stays flat under ever-changing batch shapes (pars/serving/memory.py).
    heap_trim_interval_s: float = Field(default=1.0, ge=0)
    # How long an idle model waits for company after a request arrives. 0: none; batches form anyway while a
    # pass runs (everything queued meanwhile goes in the next one), which costs a lone caller nothing.
    max_wait_ms: float = Field(default=0.0, ge=0, le=60_000)
    # When the event loop has not run for this long, every thread's stack goes to stderr (again every this
    # long while it lasts) and pars_event_loop_stalls_total counts it (pars/common/watchdog.py). 0: off.
    stall_dump_s: float = Field(default=5.0, ge=0)

    # Limits.
    max_prompts_per_request: int = Field(default=1024, ge=1)  # more: HTTP 413
    # A longer prompt is cut to this many characters before tokenizing (its head, or head and tail under
    # middle truncation: what the ranker reads of it anyway) and scored; bounds the tokenizer's work.
    max_prompt_chars: int = Field(default=100_000, ge=1)
    max_queue_prompts: int = Field(default=8192, ge=1)  # prompts waiting for the model; more: HTTP 429
    request_timeout_s: float = Field(default=30.0, gt=0)  # waiting + scoring; longer: HTTP 504

    # Security and scheduling.
    api_key: SecretStr | None = None  # set: every endpoint but /health and /ready needs `Authorization: Bearer <key>`
    # POST /admin/reload (pars/serving/reload.py). None: on when api_key is set (behind the key), else off (403):
    # a reload loads any checkpoint path the caller names, so without a key it is opened only on purpose.
    admin_reload: bool | None = Field(default=None, description="on when PREDICTOR_API_KEY is set")
    # /score_batch's score priorities: round(score * priority_scale). Not the gateway's arrival-clock scale.
    priority_scale: float = Field(default=1000.0, gt=0)

    # Request bodies (pars/serving/limits.py): read in full before any endpoint runs.
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1)  # a larger body: HTTP 413, never read in full
    body_timeout_s: float = Field(default=30.0, gt=0)  # the whole body must arrive within this; else HTTP 408

    def reload_endpoint_on(self) -> bool:
        return self.api_key is not None if self.admin_reload is None else self.admin_reload

    def threads(self) -> int:
        return self.num_threads or max(1, physical_cores() - 1)

    def threads_per_worker(self) -> int:
        return max(1, self.threads() // self.inference_workers)
