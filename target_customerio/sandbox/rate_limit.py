"""The server-side rate limit: a token bucket, answered with 429 (and no Retry-After) when empty."""

from __future__ import annotations

import threading
import time


class TokenBucket:
    """`rate` requests per second with a one-second burst (capacity = rate)."""

    def __init__(self, rate: float) -> None:
        self.rate = float(rate)
        self.tokens = self.capacity = max(float(rate), 1.0)
        self.stamp = time.monotonic()
        self._lock = threading.Lock()  # handler threads share one bucket

    def allow(self) -> bool:
        with self._lock:
            now = time.monotonic()
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            if self.tokens >= 1:
                self.tokens -= 1
                return True
            return False
