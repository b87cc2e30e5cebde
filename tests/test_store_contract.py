"""The contract every store meets, run on each of them.

The tests themselves are :class:`flask_towersess.testing.StoreContract`:
the suite a third-party store runs is the one the project's own stores run.
"""

from __future__ import annotations

import pytest

from flask_towersess.stores.base import SessionStore
from flask_towersess.testing import StoreContract


class TestStoreContract(StoreContract):
    @pytest.fixture
    def store(self, store: SessionStore) -> SessionStore:
        # conftest.py's ``store``: each built-in store in turn, fresh and empty.
        return store
