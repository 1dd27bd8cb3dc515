"""Full training state for resuming an interrupted run to the same result (`--save-state`, `--resume-state`).

One file, `training_state.pt`, written atomically by rank 0: model, optimizer, scheduler and scaler state,
the position in the run (epoch, batches done in it, optimizer steps), best metrics, history, and every
rank's RNG states (python, numpy, torch, CUDA). The batch order needs no RNG state: it is a function of
(seed, epoch) (pars/train/batches.py). Everything is stored as tensors, numbers, strings, lists and dicts, so it
is read back with `torch.load(weights_only=True)` like the checkpoints: no pickled code is ever executed.
"""

from __future__ import annotations

import os
import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pars.common.errors import PARSError
from pars.model.checkpoint import save_atomic

STATE_FILE = "training_state.pt"
FORMAT = 1


def capture_rng() -> dict[str, Any]:
    """This process's RNG states, as tensors and plain numbers."""
    version, mt, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": {"version": version, "state": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng(rng: dict[str, Any]) -> None:
    py = rng["python"]
    random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss"]))
    n = rng["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def save_state(state: dict[str, Any], path: str | os.PathLike[str]) -> None:
    save_atomic({"format": FORMAT, **state}, path)


def load_state(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a training_state.pt with weights_only=True; a bad file is one PARSError line."""
    path = Path(path)
    if not path.is_file():
        raise PARSError(f"training state not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, OSError) as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise PARSError(f"training state {path} is corrupt or not a training state ({first})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise PARSError(f"{path} is not a training state of this version (write one with --save-state)")
    return state


def check_signature(saved: dict[str, Any], current: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Resuming is only meaningful for the same data, batch order, schedule and inputs.

    A key that `saved` lacks is not checked: states written by an older version did not record it."""
    for key, value in current.items():
        if key in saved and saved[key] != value:
            raise PARSError(f"{path} was written by a different run ({key}: {saved.get(key)!r} there, "
                            f"{value!r} now); resume with the same arguments")
