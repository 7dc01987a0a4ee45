"""Time units in seconds: the one place they are defined.

Integers, so sums and products of them stay exact (``TiledWindow`` tiles, ``7 * DAY``); with a float
operand the result is the same float as with ``86_400.0`` (the values are exact in a double).

>>> MINUTE, HOUR, DAY
(60, 3600, 86400)
>>> 1.5 * DAY == 1.5 * 86_400.0, (1e9 + 0.25) / HOUR == (1e9 + 0.25) / 3_600.0
(True, True)
"""

from __future__ import annotations

MINUTE = 60
HOUR = 60 * MINUTE
DAY = 24 * HOUR
