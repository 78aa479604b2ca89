"""Property-based probing of the whole OpenAPI document with schemathesis: every operation, with
inputs that fit its schema and inputs that do not, against a live `dlm serve` that requires tokens.
No answer may be a 5xx; every answer must be one the document declares, shaped as it says."""

import secrets
from collections.abc import AsyncIterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.config import SchemathesisConfig

from tests.conftest import Server, scratch_database

ADMIN_TOKEN = "dlm_" + secrets.token_urlsafe(32)
# Bounded: each operation gets this many generated cases (plus schemathesis' own coverage cases).
EXAMPLES_PER_OPERATION = 40


# SKA's contract declares parameters that only work together (one of item_name, oid, uid; a storage
# by name or id) as each optional, so a request the document calls valid may still be refused, with
# 422 naming what is missing. Every other check runs as schemathesis ships it.
CONFIG = SchemathesisConfig.from_dict(
    {
        "auth": {"openapi": {"BearerToken": {"bearer": ADMIN_TOKEN}}},
        "checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", "401", "403", "404", "409", "422"]}},
    }
)


@pytest.fixture(scope="module")
async def served(
    postgres_url: str, template_database: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[str]:
    async with scratch_database(postgres_url, "dlm_fuzz", template=template_database) as url:
        server = await Server(url, tmp_path_factory.mktemp("fuzz"), admin_token=ADMIN_TOKEN).ready()
        try:
            yield server.base
        finally:
            server.stop()


def test_no_input_gets_a_server_error_or_an_undocumented_answer(served: str) -> None:
    schema = schemathesis.openapi.from_url(f"{served}/schema/openapi.json", config=CONFIG)
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 40, "every route is in the document"
    for operation in operations:

        @given(
            case=operation.as_strategy(generation_mode=GenerationMode.POSITIVE)
            | operation.as_strategy(generation_mode=GenerationMode.NEGATIVE)
        )
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def probe(case: schemathesis.Case) -> None:
            case.call_and_validate(timeout=30)

        try:
            probe()
        except (Exception, BaseExceptionGroup) as exc:  # every operation's failures are reported at the end
            failures.append(f"{operation.label}: {exc}")
    assert not failures, "\n\n".join(failures)
