"""When a remote request is worth another try, and how long to wait before it: shared by the sources
that talk to servers (``cds`` and the ``zarr`` source over HTTP or object storage)."""

from __future__ import annotations

import random

#: worth retrying: timeout, rate limit, server-side failures; any other 4xx means the request is wrong
TRANSIENT_HTTP = frozenset({408, 429, 500, 502, 503, 504})


def backoff(attempt: int, base: float, cap: float, jitter: float = 0.25, rng=random) -> float:
    """Seconds to wait before retry ``attempt`` (0-based): base * 2**attempt, capped, plus jitter."""
    # Jitter: jobs that failed together do not all come back in the same second.
    return min(cap, base * 2.0**attempt) * (1.0 + jitter * rng.random())
