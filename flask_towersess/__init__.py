"""Server-side sessions for Flask, with Django's session semantics.

.. code-block:: python

    from flask import Flask
    from flask_towersess import SessionExt

    app = Flask(__name__)
    app.config["SECRET_KEY"] = "change me"
    SessionExt(app)
"""

from __future__ import annotations

from .errors import ConfigurationError
from .errors import CreateError
from .errors import SerializationError
from .errors import SessionInterrupted
from .errors import StoreUnavailable
from .errors import TowerSessError
from .errors import UpdateError
from .extension import SessionExt
from .interface import MemorySessionInterface
from .interface import MongoDBSessionInterface
from .interface import RedisSessionInterface
from .interface import ServerSessionInterface
from .interface import SQLAlchemySessionInterface
from .serializers import JSONSerializer
from .serializers import MsgPackSerializer
from .session import ServerSession

__version__ = "0.2.0"

__all__ = [
    "ConfigurationError",
    "CreateError",
    "JSONSerializer",
    "MemorySessionInterface",
    "MongoDBSessionInterface",
    "MsgPackSerializer",
    "RedisSessionInterface",
    "SQLAlchemySessionInterface",
    "SerializationError",
    "ServerSession",
    "ServerSessionInterface",
    "SessionExt",
    "SessionInterrupted",
    "StoreUnavailable",
    "TowerSessError",
    "UpdateError",
]
