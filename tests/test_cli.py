"""Every command explains itself: `--help` on each stage script exits 0 and starts nothing; the servers' help
lists every setting with its default; the console scripts are declared and load."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from pars.common.settings_help import settings_epilog
from pars.gateway.settings import GatewaySettings
from pars.serving.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.relative_to(ROOT) for d in ("data_preprocess", "predictor_train", "predictor_serving")
                 for p in (ROOT / d / "scripts").glob("*.py"))
CONSOLE_SCRIPTS = {"pars-preprocess", "pars-train", "pars-evaluate", "pars-export", "pars-serve", "pars-gateway",
                   "pars-retrain"}


def help_of(script: Path) -> str:
    done = subprocess.run([sys.executable, str(ROOT / script), "--help"], capture_output=True, text=True,
                          timeout=120, cwd=ROOT / script.parts[0], stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Uvicorn running" not in done.stderr + done.stdout  # nothing was started
    return done.stdout


def test_every_stage_script_is_found():
    assert len(SCRIPTS) >= 11


@pytest.mark.parametrize("script", SCRIPTS, ids=str)
def test_help_exits_zero_without_starting_anything(script):
    assert help_of(script).startswith("usage:")


@pytest.mark.parametrize(("script", "settings", "prefix"), [
    ("predictor_serving/scripts/serve_predictor_score.py", Settings, "PREDICTOR_"),
    ("predictor_serving/scripts/pars_gateway.py", GatewaySettings, "GATEWAY_"),
])
def test_server_help_lists_every_setting_with_its_default(script, settings, prefix):
    text = help_of(Path(script))
    for name, field in settings.model_fields.items():
        line = next((ln for ln in text.splitlines() if ln.split()[:1] == [f"{prefix}{name.upper()}"]), None)
        assert line is not None, f"{prefix}{name.upper()} missing from --help"
        default = field.get_default(call_default_factory=True)
        # an unset default that means something says what (the checkpoint's own value, ...)
        shown = (field.description or "unset") if default is None else str(default)
        assert "default " + shown.lower() in line.lower()


def test_settings_epilog_shows_choices():
    text = settings_epilog(GatewaySettings, "GATEWAY_")
    assert "(remote | local | none | max_tokens)" in next(ln for ln in text.splitlines() if "GATEWAY_SCORER" in ln)


def test_console_scripts_are_declared_and_load():
    declared = {ep.name: ep for ep in entry_points(group="console_scripts") if ep.name.startswith("pars-")}
    assert set(declared) == CONSOLE_SCRIPTS
    for ep in declared.values():
        assert callable(ep.load())


def test_preprocess_command_names_its_datasets(capsys):
    from pars.data.preprocess import dataset_main

    assert dataset_main(["--help"]) == 0
    assert "sharegpt" in capsys.readouterr().out
    with pytest.raises(Exception, match="unknown dataset 'nope'"):
        dataset_main(["nope"])
