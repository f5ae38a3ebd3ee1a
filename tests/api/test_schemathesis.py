"""Property-based tests of the whole HTTP API from its own OpenAPI document (schemathesis).

The schema is fetched from the live server when the test runs, so every
operation the app lists at that moment is exercised, including ones added
after this file was written. Requests carry the bootstrap admin key, so they
reach the handlers instead of stopping at 401.

For every generated request, valid (positive) or not (negative): no 5xx, a
status the operation documents, and a content type and body that match the
schema for that status. A third run puts real values (subjects, a plan, a
key, roles) into the generated requests: the schema cannot say what a subject
looks like, so purely generated ones are nearly all refused with 422 before a
handler does any work.

Why not ``@schema.parametrize()`` over ``schemathesis.pytest.from_fixture``:
schemathesis 4.32's lazy loader reads ``request.node._nodeid``, which pytest 9.2
no longer has (AttributeError before any request is made). The loop below uses
only public API (``get_all_operations``, ``as_strategy``, ``call_and_validate``)
and reports each operation as its own pytest subtest.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Err
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.api.conftest import ADMIN_KEY, Api

pytestmark = pytest.mark.slow

SEED = 20_260_310
EXAMPLES_PER_OPERATION = 20
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
# Operations every build has; the run must find at least these, or the loading went wrong.
KNOWN = {"POST /v1/consume", "POST /v1/check", "GET /healthz", "GET /readyz", "GET /metrics"}

RUN_SETTINGS = settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,  # a live server's latency is not the property under test
    derandomize=True,  # the same examples on every run and in CI
    database=None,  # ...and no replay of examples found on someone else's machine
    # No shrinking: it keeps the run bounded; a failure still shows its request as curl.
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


# Present in the store before the run (a small tree with limits, a plan, a key), so the
# real-values run reaches the handlers' work instead of their input checks.
SUBJECTS = ["user:alice", "company:acme", "team:red", "user:ghost"]
ROLES = ["admin", "staff", "service", "member"]


def seed_store(api: Api) -> dict[str, list[str]]:
    """Real values for request fields, by field name, wherever the field appears."""
    api.quota.set_parents("user:alice", ["team:red", "company:acme"])
    api.quota.set_parents("team:red", ["company:acme"])
    api.quota.set_limit("company:acme", "tokens", "day", 1_000_000)
    api.quota.set_limit("user:alice", "requests", "minute", 50)
    api.quota.consume("user:alice", {"tokens": 1_200})
    plan = api.quota.create_plan("Gold", [{"metric": "tokens", "window": "day", "limit": 500}])
    key, _ = api.quota.create_key("service", name="seeded")
    return {
        "ref": SUBJECTS,
        "subject": SUBJECTS,
        "parent": SUBJECTS,
        "plan_id": [plan.id, "Gold"],
        "key_id": [key.id],
        "role": ROLES,
    }


def with_values(case: Case[Any], values: dict[str, str]) -> Case[Any]:
    """The case with each field named in ``values`` (path, query or body) set to it."""
    for part in (case.path_parameters, case.query, case.body):
        if isinstance(part, dict):
            for name, value in values.items():
                if name in part:
                    part[name] = value
    return case


@pytest.mark.parametrize(
    ("mode", "real_values"),
    [
        (GenerationMode.POSITIVE, False),
        (GenerationMode.NEGATIVE, False),
        (GenerationMode.POSITIVE, True),
    ],
    ids=["positive", "negative", "positive-real-values"],
)
def test_every_operation_answers_as_its_schema_says(
    api: Api, subtests: pytest.Subtests, mode: GenerationMode, real_values: bool
) -> None:
    known = seed_store(api)
    real = st.fixed_dictionaries({name: st.sampled_from(v) for name, v in known.items()})
    config = schemathesis.Config(seed=SEED)
    schema = schemathesis.openapi.from_url(f"{api.url}/openapi.json", config=config, timeout=30)
    operations = []
    for result in schema.get_all_operations():
        if isinstance(result, Err):
            pytest.fail(f"a part of the OpenAPI document cannot be used: {result.err()}")
        operations.append(result.ok())
    labels = {operation.label for operation in operations}
    assert labels >= KNOWN, KNOWN - labels

    for operation in operations:
        with subtests.test(operation.label):
            takes_input = bool(operation.body) or any(operation.iter_parameters())
            if mode is GenerationMode.NEGATIVE and not takes_input:
                pytest.skip("nothing in this request can be made invalid")

            cases = operation.as_strategy(generation_mode=mode)
            if real_values:
                cases = st.builds(with_values, cases, real)

            @RUN_SETTINGS
            @given(case=cases)
            def run(case: Case[Any]) -> None:
                case.call_and_validate(headers=AUTH, checks=CHECKS)

            run()
