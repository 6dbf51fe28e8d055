"""A short run of scripts/load_test.py against a real uvicorn server on a loopback port."""

from __future__ import annotations

import asyncio

import pytest

from scripts import load_test as load


@pytest.mark.timeout(300)
def test_concurrent_searches_and_registrations_without_errors():
    with load.local_server() as (url, key):
        report = asyncio.run(load.run_load(url, key, clients=6, duration=5, max_requests=150, register_share=0.3))
    assert report["errors"] == 0, report["error_kinds"]
    assert {"search", "register", "add_photo"} <= set(report["by_kind"]), report
    assert report["by_kind"]["search"]["p95_ms"] > 0


def test_only_loopback_is_load_tested():
    with pytest.raises(SystemExit, match="loopback only"):
        asyncio.run(load.run_load("http://10.0.0.1:8000", "k", clients=1, duration=1))
