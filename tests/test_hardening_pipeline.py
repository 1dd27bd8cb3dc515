"""Faults in the pipeline (issue 7): interrupted writes and corrupt inputs, through the real CLIs.

* preprocessing interrupted mid-write (an exception, or SIGKILL of the process) leaves the previous
  outputs byte for byte, never a truncated JSON, and no partial file once the next write succeeds;
* truncated or corrupt checkpoints and pair/row files stop every CLI with one `error:` line.

Training killed mid-epoch and resumed is covered by tests/test_train*.py.
"""

from __future__ import annotations

import json
import runpy
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from pars.common import jsonio
from pars.data import preprocess

ROOT = Path(__file__).resolve().parents[1]
OUTPUTS = ("train_data.json", "val_data.json", "train_pairs_length_diff_0.2.json", "val_pairs_length_diff_0.2.json",
           "dataset_info.json")


def sharegpt_file(path: Path, n: int = 60) -> Path:
    items = [{"id": f"c{i}", "conversations": [{"from": "human", "value": f"prompt number {i} " + "word " * (i % 7)},
                                               {"from": "gpt", "value": "answer " * (1 + i * 3 % 50)}]}
             for i in range(n)]
    path.write_text(json.dumps(items), encoding="utf-8")
    return path


def snapshot(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


@pytest.fixture
def first_run(tmp_path) -> tuple[Path, Path, dict[str, bytes]]:
    """Outputs of one complete preprocessing run (seed 42), and the data they came from."""
    data = sharegpt_file(tmp_path / "sg.json")
    out = tmp_path / "out"
    preprocess.main("sharegpt", ["--output-dir", str(out), "--data-files", str(data)])
    before = snapshot(out)
    assert sorted(before) == sorted(OUTPUTS)
    return data, out, before


def test_exception_mid_write_leaves_old_outputs_and_no_partial_files(first_run, monkeypatch):
    data, out, before = first_run
    real_dump = json.dump
    dumped = []

    def failing_dump(obj, f, **kwargs):
        dumped.append(f.name)
        if len(dumped) == 3:  # two files fully staged; the third half written, then the failure
            f.write(json.dumps(obj, **kwargs)[:100])
            raise OSError(28, "No space left on device")
        real_dump(obj, f, **kwargs)

    monkeypatch.setattr(jsonio.json, "dump", failing_dump)
    with pytest.raises(OSError, match="No space left"):
        preprocess.main("sharegpt", ["--output-dir", str(out), "--data-files", str(data), "--seed", "7"])
    assert snapshot(out) == before  # every output is the old one; no temporary is left
    for name in OUTPUTS:
        json.loads((out / name).read_text(encoding="utf-8"))


KILLER = """
import json, os, signal, sys
from pars.common import jsonio
from pars.data import preprocess

real_dump, count = json.dump, [0]

def dump_then_die(obj, f, **kwargs):
    count[0] += 1
    if count[0] == int(sys.argv[3]):
        text = json.dumps(obj, **kwargs)
        f.write(text[: len(text) // 2])
        f.flush()
        os.fsync(f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)  # no finally, no atexit: what a kill -9 or an OOM kill does
    real_dump(obj, f, **kwargs)

jsonio.json.dump = dump_then_die
preprocess.main("sharegpt", ["--output-dir", sys.argv[1], "--data-files", sys.argv[2], "--seed", "7"])
"""


@pytest.mark.parametrize("kill_at", [1, 4])
def test_sigkill_mid_write_leaves_old_outputs(first_run, kill_at):
    data, out, before = first_run
    proc = subprocess.run([sys.executable, "-c", KILLER, str(out), str(data), str(kill_at)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    after = {n: b for n, b in snapshot(out).items() if not n.startswith(".")}
    assert after == before  # the named outputs: the old ones, complete
    leftovers = [n for n in snapshot(out) if n.startswith(".")]
    assert leftovers  # the killed writer's hidden temporary (nothing reads it) ...
    # ... is removed by the next successful run, whose outputs are complete
    preprocess.main("sharegpt", ["--output-dir", str(out), "--data-files", str(data), "--seed", "7"])
    assert sorted(snapshot(out)) == sorted(OUTPUTS)
    for name in OUTPUTS:
        json.loads((out / name).read_text(encoding="utf-8"))


def test_stale_temporary_of_a_live_writer_is_kept(tmp_path):
    # Another process still writing the same file (its pid alive): its temporary must not vanish.
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        theirs = tmp_path / f".x.json.{live.pid}.abc.tmp"
        theirs.write_text("[1, 2")
        dead = tmp_path / ".x.json.999999999.abc.tmp"
        dead.write_text("[1, 2")
        jsonio.write_json_atomic([1, 2, 3], tmp_path / "x.json")
        assert theirs.exists() and not dead.exists()
        assert json.loads((tmp_path / "x.json").read_text()) == [1, 2, 3]
    finally:
        live.kill()
        live.wait()


# --- corrupt and truncated inputs through the CLIs -------------------------------------------------------------


@dataclass
class Run:
    returncode: int
    stderr: str


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run a stage script as `python <script> args` does (its `__main__` block, run_cli and all), in this
    process: the same code path as a subprocess, without importing torch again for every case."""

    def run(script: str, *args: str) -> Run:
        monkeypatch.setattr(sys, "argv", [str(ROOT / script), *args])
        capsys.readouterr()
        try:
            runpy.run_path(str(ROOT / script), run_name="__main__")
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        return Run(code, capsys.readouterr().err)

    return run


def assert_one_line_error(proc: Run, *expected: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), proc.stderr
    for text in expected:
        assert text in last, last


@pytest.fixture(scope="module")
def truncated_checkpoint(checkpoint, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("trunc") / "best_model.pt"
    data = checkpoint.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.fixture(scope="module")
def zeroed_checkpoint(checkpoint, tmp_path_factory) -> Path:
    """Right size, garbage inside: what a disk error or an interrupted copy can leave."""
    path = tmp_path_factory.mktemp("zero") / "best_model.pt"
    path.write_bytes(b"\0" * checkpoint.stat().st_size)
    return path


@pytest.mark.parametrize("which", ["truncated_checkpoint", "zeroed_checkpoint"])
def test_bad_checkpoint_in_the_evaluator_is_one_line(cli, request, which, tiny_model_dir, tiny_data, tmp_path):
    bad = request.getfixturevalue(which)
    proc = cli("predictor_train/scripts/evaluate_ranker.py", "--checkpoint", str(bad), "--model-name",
               str(tiny_model_dir), "--val-data", str(tiny_data / "val_data.json"), "--output",
               str(tmp_path / "e.json"), "--no-plots", "--device", "cpu")
    assert_one_line_error(proc, "corrupt", str(bad))
    assert not (tmp_path / "e.json").exists()


def test_truncated_checkpoint_in_the_exporter_is_one_line(cli, truncated_checkpoint, tiny_model_dir, tmp_path):
    proc = cli("predictor_train/scripts/export_hf.py", "--checkpoint", str(truncated_checkpoint), "--model-name",
               str(tiny_model_dir), "--output-dir", str(tmp_path / "hf"))
    assert_one_line_error(proc, "corrupt")


def test_truncated_checkpoint_to_resume_from_is_one_line(cli, truncated_checkpoint, tiny_model_dir, tiny_data,
                                                         tmp_path):
    proc = cli("predictor_train/scripts/train_pairwise_bert.py", "--train-file",
               str(tiny_data / "train_pairs_length_diff_0.2.json"), "--val-file",
               str(tiny_data / "val_pairs_length_diff_0.2.json"), "--output-dir", str(tmp_path / "o"),
               "--model-name", str(tiny_model_dir), "--resume-from", str(truncated_checkpoint), "--device", "cpu")
    assert_one_line_error(proc, "corrupt")


def test_truncated_checkpoint_stops_the_service_with_one_line(truncated_checkpoint, tiny_model_dir):
    from serving_helpers import start_server

    proc, _ = start_server({"PREDICTOR_MODEL_PATH": str(truncated_checkpoint),
                            "PREDICTOR_MODEL_NAME": str(tiny_model_dir), "PREDICTOR_DEVICE": "cpu"})
    out, _ = proc.communicate(timeout=90)
    assert proc.returncode != 0 and "Traceback" not in out
    lines = [ln for ln in out.splitlines() if "PARS predictor cannot start" in ln]
    assert len(lines) == 1 and "corrupt or truncated" in lines[0]


def truncate(src: Path, dst: Path) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) * 2 // 3])
    return dst


def test_truncated_pair_file_in_training_is_one_line(cli, tiny_model_dir, tiny_data, tmp_path):
    bad = truncate(tiny_data / "train_pairs_length_diff_0.2.json", tmp_path / "train_pairs.json")
    proc = cli("predictor_train/scripts/train_pairwise_bert.py", "--train-file", str(bad), "--val-file",
               str(tiny_data / "val_pairs_length_diff_0.2.json"), "--output-dir", str(tmp_path / "o"),
               "--model-name", str(tiny_model_dir), "--device", "cpu")
    assert_one_line_error(proc, "not valid JSON", str(bad))


def test_truncated_rows_and_pairs_in_the_evaluator_are_one_line(cli, checkpoint, tiny_model_dir, tiny_data, tmp_path):
    rows = truncate(tiny_data / "val_data.json", tmp_path / "val_data.json")
    proc = cli("predictor_train/scripts/evaluate_ranker.py", "--checkpoint", str(checkpoint), "--model-name",
               str(tiny_model_dir), "--val-data", str(rows), "--output", str(tmp_path / "e.json"), "--no-plots",
               "--device", "cpu")
    assert_one_line_error(proc, "not valid JSON", str(rows))
    pairs = truncate(tiny_data / "val_pairs_length_diff_0.2.json", tmp_path / "val_pairs.json")
    proc = cli("predictor_train/scripts/evaluate_ranker.py", "--checkpoint", str(checkpoint), "--model-name",
               str(tiny_model_dir), "--val-data", str(tiny_data / "val_data.json"), "--val-pairs", str(pairs),
               "--output", str(tmp_path / "e.json"), "--no-plots", "--device", "cpu")
    assert_one_line_error(proc, "not valid JSON", str(pairs))
