"""Inference backends: torch, or the optional CPU fast path, the ranker exported to ONNX and run by ONNX Runtime.

Measured on this project's 2-core CPU (benchmarks/backend_bench.py) on the MiniLM ranker, ONNX Runtime
with its BERT graph fusions (attention, embedding + layer norm, skip + layer norm, bias + GELU) gives the
same scores as torch fp32 (within 1e-5) at a higher throughput, and dynamic int8 quantization gives more
again at a small cost in ranking. Backends:

- ``onnx``: fp32, fused. Scores equal torch's.
- ``onnx-int8``: the fused graph with int8 weights, quantized per output channel (per-tensor int8 cost
  ~0.015 of Kendall's tau on ShareGPT; per channel keeps it within 0.001 there).

Export takes a few seconds and is cached: one directory per (checkpoint content, encoder, backend,
library versions), so a service restart loads the graph directly.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from pars.common.errors import PARSError
from pars.model.checkpoint import load_ranker
from pars.model.ranker import PairwiseRanker

BACKENDS = ("torch", "onnx", "onnx-int8")
ONNX_BACKENDS = ("onnx", "onnx-int8")
GRAPH_FILE = "model.onnx"
OPSET = 17


def default_cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "pars" / "onnx"


def _file_digest(path: Path, digest) -> None:
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)


def cache_key(model_name: str, checkpoint: str | os.PathLike[str] | None, backend: str,
              pooling: str = "pooler") -> str:
    """Changes whenever the weights, the encoder, the pooling, the backend or the converting libraries do."""
    import onnxruntime
    import transformers

    digest = hashlib.sha256()
    # the default pooling is left out of the key, so graphs cached before pooling existed stay valid
    extra = [] if pooling == "pooler" else [pooling]
    digest.update(json.dumps([model_name, backend, OPSET, onnxruntime.__version__, transformers.__version__,
                              torch.__version__.split("+")[0], *extra]).encode())
    if checkpoint is not None:
        path = Path(checkpoint)
        for f in sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]:
            digest.update(f.name.encode())
            _file_digest(f, digest)
    return digest.hexdigest()[:24]


class _ScoreOnly(torch.nn.Module):
    """The graph to export: (input_ids, attention_mask) -> score."""

    def __init__(self, ranker: PairwiseRanker) -> None:
        super().__init__()
        self.ranker = ranker

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.ranker.score(input_ids, attention_mask)


def export_onnx(ranker: PairwiseRanker, out_dir: str | os.PathLike[str], backend: str = "onnx") -> Path:
    """Write `out_dir/model.onnx` for `backend` ('onnx' or 'onnx-int8'); returns its path.

    The encoder is exported with eager attention: ONNX Runtime's BERT optimizer recognizes (and fuses)
    only that attention pattern, not the SDPA one."""
    if backend not in ONNX_BACKENDS:
        raise PARSError(f"backend {backend!r} is not an ONNX backend ({', '.join(ONNX_BACKENDS)})")
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.optimizer import optimize_model

    ranker = ranker.to("cpu").float().eval()
    config = ranker.encoder.config
    if hasattr(ranker.encoder, "set_attn_implementation"):
        ranker.encoder.set_attn_implementation("eager")
    else:
        config._attn_implementation = "eager"
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        raw, fused = Path(tmp) / "raw.onnx", Path(tmp) / "fused.onnx"
        example = (torch.ones(2, 8, dtype=torch.long), torch.ones(2, 8, dtype=torch.long))
        with warnings.catch_warnings():
            # The TorchScript-based exporter is deprecated in favour of the dynamo one, which needs
            # onnxscript; its graph is the one ONNX Runtime's BERT fusions are written for.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                _ScoreOnly(ranker), example, str(raw), input_names=["input_ids", "attention_mask"],
                output_names=["score"], opset_version=OPSET, dynamo=False,
                dynamic_axes={"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
                              "score": {0: "batch"}},
            )
            optimized = optimize_model(str(raw), model_type="bert", num_heads=config.num_attention_heads,
                                       hidden_size=config.hidden_size)
        optimized.save_model_to_file(str(fused))
        final = out_dir / GRAPH_FILE
        staged = Path(tmp) / GRAPH_FILE
        if backend == "onnx-int8":
            quantize_dynamic(str(fused), str(staged), weight_type=QuantType.QInt8, per_channel=True,
                             extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        else:
            shutil.move(fused, staged)
        os.replace(staged, final)  # atomic: a concurrent loader sees the whole graph or none
    return final


class OnnxRanker:
    """`score(input_ids, attention_mask)` through ONNX Runtime: what inference needs of a PairwiseRanker."""

    def __init__(self, graph: str | os.PathLike[str], threads: int | None = None, spin: bool = False) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # ONNX Runtime's workers busy-wait between operators by default; in a server that shares its few
        # cores with the HTTP layer, that spinning takes CPU the event loop and tokenizer need.
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        try:
            self.session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise PARSError(f"ONNX graph {graph} cannot be loaded: {str(exc).splitlines()[0][:200]}") from None
        self.graph = Path(graph)

    def score(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        feeds = {"input_ids": np.ascontiguousarray(input_ids.cpu().numpy(), dtype=np.int64),
                 "attention_mask": np.ascontiguousarray(attention_mask.cpu().numpy(), dtype=np.int64)}
        (scores,) = self.session.run(None, feeds)
        return torch.from_numpy(np.asarray(scores, dtype=np.float32).reshape(-1))


def load_onnx_ranker(model_name: str, checkpoint: str | os.PathLike[str] | None, backend: str,
                     cache_dir: str | os.PathLike[str] | None = None, threads: int | None = None,
                     spin: bool = False, log: Callable[[str], None] = print,
                     pooling: str = "pooler") -> OnnxRanker:
    """The ranker for an ONNX backend, exported on first use and cached by content."""
    if backend not in ONNX_BACKENDS:
        raise PARSError(f"backend {backend!r} is not an ONNX backend ({', '.join(ONNX_BACKENDS)})")
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise PARSError(f"backend {backend!r} needs onnxruntime and onnx (pip install onnxruntime onnx)") from None
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    target = root / cache_key(model_name, checkpoint, backend, pooling)
    graph = target / GRAPH_FILE
    if not graph.is_file():
        log(f"Exporting the ranker to ONNX ({backend}) in {target} (once per checkpoint)")
        try:
            export_onnx(load_ranker(model_name, checkpoint, pooling), target, backend)
        except OSError as exc:
            raise PARSError(f"cannot write the ONNX cache {target}: {exc.strerror or exc}") from None
    return OnnxRanker(graph, threads=threads, spin=spin)


def load_inference_model(model_name: str, checkpoint: str | os.PathLike[str] | None, backend: str = "torch",
                         cache_dir: str | os.PathLike[str] | None = None, threads: int | None = None,
                         spin: bool = False, log: Callable[[str], None] = print,
                         pooling: str = "pooler") -> PairwiseRanker | OnnxRanker:
    """What PromptScorer runs for `backend`: the torch ranker, or its ONNX Runtime export."""
    if backend == "torch":
        return load_ranker(model_name, checkpoint, pooling)
    if backend not in BACKENDS:
        raise PARSError(f"unknown backend {backend!r} (use {', '.join(BACKENDS)})")
    return load_onnx_ranker(model_name, checkpoint, backend, cache_dir, threads=threads, spin=spin, log=log,
                            pooling=pooling)
