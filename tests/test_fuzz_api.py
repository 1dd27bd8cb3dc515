"""API fuzzing from the service's own OpenAPI schema (schemathesis) against a running server on loopback.

Every operation gets valid and invalid requests generated from /openapi.json (positive and negative
modes); each answer must be no 5xx, conform to the schema (status code documented, body of the
documented shape, JSON), and every error must carry a JSON body with a one-line message. Afterwards the
server must still answer correctly (scores equal the in-process model's).

The number of examples per operation and mode is PARS_FUZZ_MAX_EXAMPLES (default 25, for CI); a longer
campaign:

    PARS_FUZZ_MAX_EXAMPLES=1000 OMP_NUM_THREADS=1 .venv/bin/pytest -q tests/test_fuzz_api.py
"""

from __future__ import annotations

import os
import re

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from serving_helpers import running_server

MAX_EXAMPLES = int(os.environ.get("PARS_FUZZ_MAX_EXAMPLES", "25"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def fuzz_server(tiny_model_dir, checkpoint):
    """Small limits, so that generated inputs reach them too (long prompts cut, 413 for big batches)."""
    with running_server({"PREDICTOR_MODEL_PATH": str(checkpoint), "PREDICTOR_MODEL_NAME": str(tiny_model_dir),
                         "PREDICTOR_DEVICE": "cpu", "PREDICTOR_NUM_THREADS": "1", "PREDICTOR_MAX_WAIT_MS": "1",
                         "PREDICTOR_MAX_PROMPT_CHARS": "300", "PREDICTOR_MAX_PROMPTS_PER_REQUEST": "8"}) as url:
        yield url


@pytest.fixture(scope="module")
def api_schema(fuzz_server):
    schema = schemathesis.openapi.from_url(fuzz_server + "/openapi.json")
    schema.config.update(base_url=fuzz_server)
    schema.config.generation.update(allow_x00=True, codec="utf-8")  # NUL bytes and all of Unicode in strings
    return schema


# The operations of the schema (test_openapi_lists_these_operations keeps this list honest). Each is fuzzed
# as its own test, in positive and negative modes. (schemathesis.pytest.from_fixture, the lazy loader,
# fails under pytest 9, so the Hypothesis test is built here from the operation's strategy.)
OPERATIONS = [("/score", "POST"), ("/score_batch", "POST"), ("/compare", "POST"), ("/compare_batch", "POST"),
              ("/", "GET"), ("/health", "GET"), ("/ready", "GET"), ("/metrics", "GET"), ("/admin/reload", "POST")]


def test_openapi_lists_these_operations(api_schema):
    found = {(op.ok().path, op.ok().method.upper()) for op in api_schema.get_all_operations()}
    assert found == set(OPERATIONS)


def check(case: schemathesis.Case) -> None:
    response = case.call(timeout=60)
    case.validate_response(response, checks=CHECKS)
    if response.status_code >= 400:
        body = response.json()
        assert isinstance(body.get("error"), str) and body["error"], body
        assert isinstance(body.get("message"), str) and body["message"] and "\n" not in body["message"], body


# Negative mode for the operations that take input (a GET without parameters has no invalid request).
CAMPAIGN = [(p, m, mode) for p, m in OPERATIONS for mode in GenerationMode
            if mode == GenerationMode.POSITIVE or m == "POST"]


@pytest.mark.parametrize("path, method, mode", CAMPAIGN, ids=[f"{m} {p} {mode.value}" for p, m, mode in CAMPAIGN])
def test_api_fuzz(api_schema, path, method, mode):
    operation = api_schema[path][method]

    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def fuzz(case: schemathesis.Case) -> None:
        check(case)

    fuzz()


def test_server_answers_correctly_after_the_fuzz(fuzz_server, direct):
    # Runs after test_api_fuzz (file order): the same server, the same scores as the model in-process.
    prompts = ["write a long detailed essay about the history of rome", "yes"]
    with httpx.Client(base_url=fuzz_server, timeout=30) as client:
        assert client.get("/health").json() == {"status": "ok"}
        assert client.get("/ready").status_code == 200
        body = client.post("/score_batch", json={"prompts": prompts}).json()
        assert body["scores"] == pytest.approx(direct.score(prompts), abs=1e-5)
        metrics = client.get("/metrics").text
    # No 5xx counted over the whole campaign (but /ready's 503 while the server was warming up).
    server_errors = re.findall(r'^pars_requests_total\{endpoint="([^"]*)",status="5\d\d"\}', metrics, flags=re.M)
    assert set(server_errors) <= {"/ready"}, server_errors
