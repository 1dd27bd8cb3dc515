"""Autocast: which dtype the trainer's forward pass runs under (`--mixed-precision`, named as in accelerate),
and the context the trainer and the scorer (PREDICTOR_DTYPE=bfloat16 on CPU) open for it.

The original release autocasts on CUDA only (float16 with loss scaling) and trains in float32 on CPU. CPUs
with AMX or AVX512-BF16 run bfloat16 matmuls several times faster than float32 ones, which makes a training
step about 1.5x faster here (benchmarks/train_step_bench.py --bf16), so `auto` uses bfloat16 there, except in
`--batching original`, whose point is to reproduce the original exactly. Weights, gradients and the
optimizer stay float32 in every mode: autocast only changes the dtype of the forward pass's matmuls.
"""

from __future__ import annotations

import torch

from pars.common.errors import PARSError

CHOICES = ("auto", "no", "fp16", "bf16")
# Torch dtypes by name: the service's PREDICTOR_DTYPE names, and --mixed-precision's short ones (accelerate's)
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "bf16": torch.bfloat16}


def cpu_has_native_bf16() -> bool:
    """True when this CPU has bfloat16 matmul instructions (AMX tiles or AVX512-BF16) that oneDNN uses."""
    try:
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    except AttributeError:  # a torch build without these probes
        return False


def inference_dtype(device: torch.device, backend: str = "torch") -> str:
    """The service's precision when PREDICTOR_DTYPE is unset (auto): float16 on CUDA, bfloat16 autocast on a
    CPU with bfloat16 matmul instructions, float32 elsewhere and on the ONNX backends (float32 graphs).

    Kept only where the ranking agrees with float32's: on the 1,114 ShareGPT val prompts the quickstart
    ranker's bfloat16-autocast scores order the prompts as its float32 ones do (Kendall's tau between them
    and against the true lengths: benchmarks/results/dtype_agreement.json, docs/serving-measurements.md)."""
    if backend != "torch":
        return "float32"
    if device.type == "cuda":
        return "float16"
    if device.type == "cpu" and cpu_has_native_bf16():
        return "bfloat16"
    return "float32"


def resolve(choice: str, device: torch.device, original_batching: bool = False) -> str:
    """The mode a run uses: `no`, `fp16` or `bf16`."""
    if choice not in CHOICES:
        raise PARSError(f"--mixed-precision must be one of {', '.join(CHOICES)}, not {choice!r}")
    if choice == "auto":
        if device.type == "cuda":
            return "fp16"  # the original's AMP
        return "bf16" if device.type == "cpu" and not original_batching and cpu_has_native_bf16() else "no"
    if choice == "fp16" and device.type != "cuda":
        raise PARSError("--mixed-precision fp16 needs a CUDA device (CPU autocast supports bf16)")
    return choice


def autocast(dtype: torch.dtype | None, device: torch.device) -> torch.autocast:
    """The autocast context of a forward pass in `dtype` (a disabled one for None): the trainer's, with
    `DTYPES.get(mode)`, and the scorer's."""
    return torch.autocast(device_type=device.type, dtype=dtype or torch.float32, enabled=dtype is not None)
