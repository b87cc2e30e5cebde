"""How tests react to a missing backend service."""

from __future__ import annotations

import os

import pytest


def services_required() -> bool:
    """True in CI (``TOWERSESS_REQUIRE_SERVICES`` set): a missing service is
    a failure, because a backend test that skips proves nothing."""
    return bool(os.environ.get("TOWERSESS_REQUIRE_SERVICES"))


def service_unavailable(reason: str) -> None:
    if services_required():
        pytest.fail(f"{reason} (required: TOWERSESS_REQUIRE_SERVICES is set)")
    pytest.skip(reason)
