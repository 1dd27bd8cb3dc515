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
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, IndexError, KeyError) as exc:
        # torch.load raises these too on a file that is not a checkpoint at all (a text file, /etc/passwd)
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


def _json_or_none(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def sentence_transformers_modules(path: str | os.PathLike[str]) -> list[dict] | None:
    """modules.json of a directory in the sentence-transformers layout pars.model.export writes for a
    mean-pooled ranker (Transformer, Pooling, Dense to one output); None for any other directory, such as
    an encoder published with sentence-transformers (its last module normalizes)."""
    path = Path(path)
    modules = _json_or_none(path / "modules.json")
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        return None
    if [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules] != ["Transformer", "Pooling", "Dense"]:
        return None
    dense = _json_or_none(path / str(modules[2].get("path", "")) / "config.json")
    return modules if isinstance(dense, dict) and dense.get("out_features") == 1 else None


def is_exported_dir(path: str | os.PathLike[str]) -> bool:
    """A directory written by pars.model.export: a sequence-classification model with one output, or the
    sentence-transformers layout of a mean-pooled ranker."""
    path = Path(path)
    if sentence_transformers_modules(path) is not None:
        return True
    config = _json_or_none(path / "config.json")
    if not isinstance(config, dict):
        return False
    archs = config.get("architectures") or []
    return any(a.endswith("ForSequenceClassification") for a in archs) and len(config.get("id2label", {0: 0})) == 1


def load_sentence_transformers(path: Path, modules: list[dict]) -> PairwiseRanker:
    """The mean-pooled ranker from its sentence-transformers export: the encoder at the root, fc the Dense
    layer; read without sentence-transformers, refused unless its modules compute exactly the ranker."""
    from safetensors.torch import load_file
    from transformers import AutoModel

    dense_dir = path / str(modules[2].get("path", ""))
    pooling, dense = (_json_or_none(d / "config.json") for d in (path / str(modules[1].get("path", "")), dense_dir))
    pooling, dense = (x if isinstance(x, dict) else {} for x in (pooling, dense))
    modes = {k for k, v in pooling.items() if k.startswith("pooling_mode_") and v is True}
    mean = pooling.get("pooling_mode", "mean_tokens" if modes == {"pooling_mode_mean_tokens"} else None)
    if (modules[0].get("path") not in ("", ".") or mean not in ("mean", "mean_tokens") or not dense.get("bias")
            or dense.get("activation_function") != "torch.nn.modules.linear.Identity"):
        raise PARSError(f"{path}: a sentence-transformers directory but not a ranker export (needs the encoder "
                        "at its root, mean pooling, and a Dense layer to one output with bias and no activation)")
    try:
        encoder = AutoModel.from_pretrained(path, use_safetensors=True)
        weights = load_file(str(dense_dir / "model.safetensors"))
        ranker = PairwiseRanker(encoder, "mean")
        ranker.fc.load_state_dict({"weight": weights["linear.weight"], "bias": weights["linear.bias"]})
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise PARSError(f"cannot load exported model {path}: {str(exc).splitlines()[0][:200]}") from None
    return ranker


def load_exported(path: str | os.PathLike[str]) -> PairwiseRanker:
    """The ranker from an exported directory, the inverse of pars.model.export: a sentence-transformers one
    (mean-pooled), or a Hugging Face sequence-classification one (config.json + model.safetensors) whose
    encoder is the base model and fc its one-output classification head (logit = score)."""
    from transformers import AutoModelForSequenceClassification

    path = Path(path)
    modules = sentence_transformers_modules(path)
    if modules is not None:
        return load_sentence_transformers(path, modules)
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


def head_outputs(state: dict[str, torch.Tensor] | None) -> int:
    """The outputs of a checkpoint's head: 1 (a score), or one per length bucket (--loss classification)."""
    weight = state.get("fc.weight") if state is not None else None
    return int(weight.shape[0]) if weight is not None and weight.dim() == 2 else 1


def load_ranker(model_name: str, checkpoint: str | os.PathLike[str] | None = None,
                pooling: str = "pooler") -> PairwiseRanker:
    """The encoder of `model_name`, with a checkpoint's weights on top when one is given.

    `checkpoint` may also be an exported directory (pars.model.export), which holds the encoder itself; so
    may `model_name` when no checkpoint is given. A sequence-classification export pools with the pooler, a
    sentence-transformers one with the mean: `pooling` must say the same."""
    check_pooling(pooling)
    exported = checkpoint if checkpoint is not None and Path(checkpoint).is_dir() else (
        model_name if checkpoint is None and is_exported_dir(model_name) else None)
    if exported is not None:
        own = "mean" if sentence_transformers_modules(exported) is not None else "pooler"
        if pooling != own:
            kind = "a sentence-transformers" if own == "mean" else "a sequence-classification"
            raise PARSError(f"{exported} is {kind} export, which pools with {own!r}, but pooling {pooling!r} was "
                            f"asked for (PREDICTOR_POOLING / --pooling {own}, or leave it to its ranker_config.json)")
        return load_exported(exported)
    state = read_state_dict(checkpoint) if checkpoint is not None else None  # fail fast on a bad file
    model = PairwiseRanker.from_pretrained(model_name, pooling, head_outputs(state))
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
