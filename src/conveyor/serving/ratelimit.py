"""A sliding one-minute window per identity: how many requests it sent in the last 60 seconds."""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable

__all__ = ["RateLimiter"]

WINDOW_S = 60.0


class RateLimiter:
    """Counts each identity's requests over the last minute (in this server process)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._hits: dict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def hit(self, who: str, per_minute: int) -> float:
        """Record a request by ``who``; 0 when it is within ``per_minute``, else the seconds until it would be
        (the request is then not counted)."""
        now = self._clock()
        with self._lock:
            hits = self._hits[who]
            while hits and hits[0] <= now - WINDOW_S:
                hits.popleft()
            if len(hits) >= per_minute:
                return float(hits[0] + WINDOW_S - now)
            hits.append(now)
            return 0.0
