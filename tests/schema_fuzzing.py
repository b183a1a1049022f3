"""Schemathesis over the app's own OpenAPI: generated requests for every operation, each answer
checked against what the OpenAPI declares. test_api_conformance.py runs a bounded pass in the suite;
``NURTURE_FUZZ_EXAMPLES=30 pytest tests/test_api_conformance.py -k sqlite`` runs a long one.

The app runs on the test's event loop (its database engine and Temporal client live there), so
Hypothesis runs in a worker thread and each request is handed back to the loop; schemathesis
generates the cases and validates the answers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

BASE_URL = "http://test"

# The checks that judge one answer on its own (the ones that send more requests, like
# unsupported_method, have their own tests: they would go around the app's event loop).
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


@dataclass
class FuzzReport:
    cases: int = 0
    server_errors: int = 0
    failures: dict[str, str] = field(default_factory=dict)  # operation + failure title -> first report

    def summary(self) -> str:
        return "\n\n".join(f"== {key}\n{text}" for key, text in sorted(self.failures.items()))


def _settings(max_examples: int) -> hypothesis_settings:
    return hypothesis_settings(
        max_examples=max_examples,
        deadline=None,  # an answer's time depends on the machine's load, not on the case
        suppress_health_check=list(HealthCheck),  # slow draws and filtered strategies are expected for big schemas
        derandomize=True,  # the same cases on every run, so CI is repeatable
        database=None,
        phases=[Phase.explicit, Phase.generate],  # every failure is reported as found, not shrunk
        print_blob=False,
    )


def fuzz(app_schema: dict, send: Callable[[requests.PreparedRequest], httpx.Response], max_examples: int) -> FuzzReport:
    """Run every operation in both generation modes; collect failures instead of stopping at the first."""
    schema = schemathesis.openapi.from_dict(app_schema)
    report = FuzzReport()
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @_settings(max_examples)
            @given(case=operation.as_strategy(generation_mode=mode))
            def run(case: schemathesis.Case) -> None:
                kwargs = case.as_transport_kwargs(base_url=BASE_URL)
                kwargs.pop("auth", None)
                response = send(requests.Request(**kwargs).prepare())
                report.cases += 1
                if response.status_code >= 500:
                    report.server_errors += 1
                try:
                    case.validate_response(response, checks=CHECKS)
                except FailureGroup as group:
                    for failure in group.exceptions:
                        report.failures.setdefault(f"{operation.label} [{mode.value}] {failure.title}", str(group))

            try:
                run()
            except Unsatisfiable:
                # Nothing about this operation can be invalid (no parameters, no body).
                assert mode is GenerationMode.NEGATIVE, operation.label
    return report


async def fuzz_app(app, max_examples: int) -> FuzzReport:
    """``fuzz`` the FastAPI ``app`` in process; its requests run on the calling event loop."""
    loop = asyncio.get_running_loop()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE_URL) as http:

        def send(prepared: requests.PreparedRequest) -> httpx.Response:
            request = http.request(prepared.method, prepared.url, headers=dict(prepared.headers), content=prepared.body)
            return asyncio.run_coroutine_threadsafe(request, loop).result(timeout=120)

        return await asyncio.to_thread(fuzz, app.openapi(), send, max_examples)
