"""deploy/compose.yaml, the scale-out example, read as a deployment would: every GATEWAY_* / PREDICTOR_*
variable it sets must be a real setting (and a valid value), so the example cannot rot as settings change."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from pars.gateway.settings import GatewaySettings
from pars.serving.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
PREFIXES = {"GATEWAY_": GatewaySettings, "PREDICTOR_": Settings}


def services() -> dict[str, dict]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text(encoding="utf-8"))["services"]


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # the KEY=VALUE list form
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def pars_variables() -> list[tuple[str, str, str]]:
    return [(name, key, value) for name, service in services().items()
            for key, value in environment(service).items() if key.startswith(tuple(PREFIXES))]


def test_the_example_sets_pars_variables_at_all():
    names = {name for name, _, _ in pars_variables()}
    assert {"gateway-1", "gateway-2", "predictor-1", "predictor-2"} <= names


@pytest.mark.parametrize(("service", "key", "value"), pars_variables())
def test_every_variable_is_a_real_setting_with_a_valid_value(service, key, value):
    prefix = next(p for p in PREFIXES if key.startswith(p))
    model = PREFIXES[prefix]
    field = key[len(prefix):].lower()
    assert field in model.model_fields, f"{service}: {key} is not a setting of {model.__name__}"
    model(**{field: value})  # raises on a value the service would refuse at start-up


def test_every_gateway_reaches_services_of_the_file_and_shares_the_priority_scale():
    all_services = services()
    gateways = {name: environment(s) for name, s in all_services.items() if name.startswith("gateway")}
    assert len(gateways) >= 2
    for env in gateways.values():
        for key in ("GATEWAY_UPSTREAM_URL", "GATEWAY_PREDICTOR_URL"):
            host = re.match(r"https?://([^:/]+)", env[key]).group(1)
            assert host in all_services, f"{key}={env[key]} names no service"
    # The settings that define the scale must agree between gateways (pars/gateway/priority.py).
    for key in ("GATEWAY_FAIRNESS_WINDOW_S", "GATEWAY_CLIENT_PRIORITY"):
        assert len({env.get(key) for env in gateways.values()}) == 1


def test_vllm_schedules_by_priority_and_the_balancer_knows_every_gateway():
    all_services = services()
    command = " ".join(all_services["vllm"]["command"])
    assert "--scheduling-policy priority" in command
    nginx = (DEPLOY / "nginx.conf").read_text(encoding="utf-8")
    balanced = set(re.findall(r"server\s+([\w-]+):\d+;", nginx))
    assert balanced == {name for name in all_services if name.startswith("gateway")}
