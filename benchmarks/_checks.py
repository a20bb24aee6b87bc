"""What every benchmark does with the figures of its last line."""

from __future__ import annotations

import math
import sys


def require(**figures: float) -> None:
    """Exit non-zero naming every figure that is not a finite positive number: a measurement or a
    baseline that failed must not pass for a result (the line itself is printed before)."""
    bad = [f"{k}={v}" for k, v in figures.items() if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0]
    if bad:
        sys.exit(f"benchmark failed: {', '.join(bad)} is not a measured figure (see the lines above)")
