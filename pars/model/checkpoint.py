"""Reading and writing ranker checkpoints: plain state_dicts in the original release's layout (read with
`weights_only=True`, written atomically), and exported directories.
"""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from pathlib import Path

import torch
import torch.nn as nn

from pars.common.errors import PARSError
from pars.model.ranker import PairwiseRanker, check_pooling

# Buffers that older transformers releases saved in the state_dict and newer ones do not
# (they became non-persistent); a checkpoint may carry them or not.
_OPTIONAL_BUFFER_SUFFIXES = ("embeddings.position_ids",)


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a checkpoint with `weights_only=True`: tensors only, never pickled code."""
    path = Path(path)
    if not path.is_file():
        raise PARSError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "Unsupported global" in text or "GLOBAL" in text:
            raise PARSError(
                f"refusing to load checkpoint {path}: it carries pickled Python objects, not only tensors "
                "(loaded with weights_only=True; re-save it as a plain state_dict)"
            ) from None
        raise PARSError(f"checkpoint {path} is corrupt or not a PyTorch checkpoint") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise PARSError(f"checkpoint {path} is corrupt or truncated ({first})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PARSError(f"checkpoint {path} is not a state_dict of tensors")
    return state


def load_state_dict_into(model: PairwiseRanker, state: dict[str, torch.Tensor], source: str) -> None:
    """Strict load, tolerating only buffers that transformers versions disagree on."""
    expected = model.state_dict().keys()
    state = {
        k: v
        for k, v in state.items()
        if k in expected or not k.endswith(_OPTIONAL_BUFFER_SUFFIXES)
    }
    missing = [k for k in expected if k not in state and not k.endswith(_OPTIONAL_BUFFER_SUFFIXES)]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        detail = []
        if missing:
            detail.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            detail.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        raise PARSError(
            f"checkpoint {source} does not fit this model: {', '.join(detail)} keys; "
            "was it trained with a different --model-name?"
        )
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        first = next((ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln), str(exc))
        raise PARSError(
            f"checkpoint {source} does not fit this model ({first[:200]}); "
            "was it trained with a different --model-name?"
        ) from None


def is_exported_dir(path: str | os.PathLike[str]) -> bool:
    """A directory written by export_hf.py (or any sequence-classification model with one output)."""
    path = Path(path)
    if not (path / "config.json").is_file():
        return False
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    archs = config.get("architectures") or []
    return any(a.endswith("ForSequenceClassification") for a in archs) and len(config.get("id2label", {0: 0})) == 1


def load_exported(path: str | os.PathLike[str]) -> PairwiseRanker:
    """The ranker from an exported Hugging Face directory (config.json + model.safetensors): its encoder is
    the base model, fc its one-output classification head (logit = score), the inverse of pars.model.export."""
    from transformers import AutoModelForSequenceClassification

    path = Path(path)
    if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
        raise PARSError(f"{path} is a directory but not an exported model (needs config.json and model.safetensors)")
    if not is_exported_dir(path):
        raise PARSError(f"{path}: config.json is not a sequence-classification model with one output")
    try:
        seq = AutoModelForSequenceClassification.from_pretrained(path, use_safetensors=True)
    except (OSError, ValueError) as exc:
        raise PARSError(f"cannot load exported model {path}: {str(exc).splitlines()[0][:200]}") from None
    base = getattr(seq, seq.base_model_prefix, None)
    head = getattr(seq, "classifier", None)
    if not isinstance(head, nn.Linear) or base is None or getattr(base, "pooler", None) is None:
        raise PARSError(f"{path}: only BERT-family exports (classifier = Linear(pooler output)) load as a ranker")
    ranker = PairwiseRanker(base)
    ranker.fc.load_state_dict(head.state_dict())
    return ranker


def load_ranker(model_name: str, checkpoint: str | os.PathLike[str] | None = None,
                pooling: str = "pooler") -> PairwiseRanker:
    """The encoder of `model_name`, with a checkpoint's weights on top when one is given.

    `checkpoint` may also be an exported Hugging Face directory (pars.model.export), which holds the encoder
    itself; so may `model_name` when no checkpoint is given. Exports are always pooler-pooled."""
    check_pooling(pooling)
    exported = checkpoint if checkpoint is not None and Path(checkpoint).is_dir() else (
        model_name if checkpoint is None and is_exported_dir(model_name) else None)
    if exported is not None:
        if pooling != "pooler":
            raise PARSError(f"{exported} is an exported sequence-classification model, which pools with the "
                            f"pooler; pooling {pooling!r} applies to state_dict checkpoints only")
        return load_exported(exported)
    state = read_state_dict(checkpoint) if checkpoint is not None else None  # fail fast on a bad file
    model = PairwiseRanker.from_pretrained(model_name, pooling)
    if state is not None:
        load_state_dict_into(model, state, str(checkpoint))
    return model


def save_atomic(obj: object, path: str | os.PathLike[str]) -> None:
    """torch.save to a temporary file beside `path`, then rename: a crash mid-write never leaves a
    corrupt file in place (the rename is atomic on POSIX file systems)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_checkpoint(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """A plain state_dict (the original release's checkpoint format), written atomically."""
    save_atomic(model.state_dict(), path)
