"""Property-based run of the app's own OpenAPI schema: no 5xx, every response conforms to the schema.

Each operation's cases come from schemathesis' strategy and run through its in-process ASGI client
with an admin key. (schemathesis' pytest fixture loader relies on a pytest attribute that pytest 9
removed, so the operations are driven with hypothesis directly.)
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from app.core.config import Settings
from app.main import create_app
from app.security.keys import KeyStore
from app.service import MatchingService, PhotoInput
from tests.conftest import bearer, jpeg_bytes, random_photo

MAX_EXAMPLES = 12  # per operation: keeps the run well under a minute on two cores


@pytest.fixture(scope="module")
def app_and_key(tmp_path_factory, encoder):
    settings = Settings(data_dir=tmp_path_factory.mktemp("schemathesis") / "data", model="efficientnet-lite0",
                        device="cpu", rate_limit_per_minute=0, auth_failures_per_minute=0)
    service = MatchingService(settings, encoder=encoder).start()
    for n in range(3):
        service.register_artefact({"inventory_number": f"S-{n}", "title": "seed"},
                                   [PhotoInput(jpeg_bytes(random_photo(500 + n)))])
    admin = KeyStore(service.store.sessions).create("schemathesis", "admin")
    yield create_app(settings, service=service), admin
    service.close()


def _operations(app) -> list:
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    return [result.ok() for result in schema.get_all_operations()]


@pytest.mark.timeout(180)
def test_api_conforms_to_its_schema(app_and_key):
    app, admin = app_and_key
    operations = _operations(app)
    assert len(operations) >= 14
    for operation in operations:

        @given(case=operation.as_strategy())
        @hypothesis_settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
                             suppress_health_check=list(HealthCheck))
        def check(case):
            if case.path == "/v1/keys/{key_id}" and case.path_parameters.get("key_id") == admin.key.id:
                case.path_parameters["key_id"] = admin.key.id + 10_000  # keep the key this run uses
            # Every check but "schema-valid data is accepted": a schema cannot say "a readable photo",
            # so random bytes in the image field are rightly refused with 422.
            case.call_and_validate(headers=bearer(admin.token), excluded_checks=[positive_data_acceptance])

        check()
