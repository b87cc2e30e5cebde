"""Moments as whole microseconds since the Unix epoch.

Stores that keep an expiry in a binary header (:class:`~.redis.RedisStore`,
the cache entries of :class:`~.caching.CachingStore`) write it as a signed
integer count of microseconds since 1970-01-01 UTC: exact (a float timestamp
loses microseconds), and ordered as the moments are.

.. versionadded:: 0.2
"""

from __future__ import annotations

from datetime import datetime
from datetime import timedelta
from datetime import timezone

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICROSECOND = timedelta(microseconds=1)

#: The counts a ``datetime`` can hold (years 1 to 9999). A stored count
#: outside them is refused by :func:`from_epoch_micros`, not turned into an
#: ``OverflowError`` on every read.
MIN_EPOCH_MICROS = (datetime.min.replace(tzinfo=timezone.utc) - EPOCH) // _MICROSECOND
MAX_EPOCH_MICROS = (datetime.max.replace(tzinfo=timezone.utc) - EPOCH) // _MICROSECOND


def to_epoch_micros(moment: datetime) -> int:
    """Microseconds from the epoch to ``moment``, an aware datetime.

    Integer arithmetic throughout, so the count is exact.

    :raises TypeError: ``moment`` is naive.
    """
    return (moment - EPOCH) // _MICROSECOND


def from_epoch_micros(micros: int) -> datetime | None:
    """The aware UTC datetime ``micros`` microseconds after the epoch, or
    ``None`` if no ``datetime`` can hold it (a damaged or forged value)."""
    if not MIN_EPOCH_MICROS <= micros <= MAX_EPOCH_MICROS:
        return None
    return EPOCH + micros * _MICROSECOND
