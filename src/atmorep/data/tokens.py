"""Tokens: a field's values cut into ``(tt, ty, tx)`` space-time tokens per level, and the 8 token-info
values the model reads beside them.

Legend: L levels, T/Y/X tokens in time/lat/lon, tt/ty/tx points per token, P = tt*ty*tx values per
token.
"""

from __future__ import annotations

import numpy as np

TOKEN_INFO = ("year", "day_of_year", "hour", "level", "colatitude", "longitude", "level_again", "resolution")
#: the model's token info is ``raw * TOKEN_INFO_SCALE + TOKEN_INFO_OFFSET`` (O(1) values), ``raw`` as the
#: original's sampler passes it (year, 0-based day of year, hour, level, colatitude and longitude in
#: degrees of the token centre, level, resolution); importing its weights folds this map into them
TOKEN_INFO_SCALE = np.array([1 / 100, 1 / 365, 1 / 24, 1 / 137, 1 / 180, 1 / 360, 1 / 137, 1.0])
TOKEN_INFO_OFFSET = np.array([-20.0, 0, 0, 0, 0, 0, 0, 0])


def tokenize(values_LTYX: np.ndarray, token_size) -> np.ndarray:
    """``(L, T*tt, Y*ty, X*tx)`` -> ``(L, T, Y, X, P)`` without Python loops."""
    tt, ty, tx = token_size
    L, nt, ny, nx = values_LTYX.shape
    v = values_LTYX.reshape(L, nt // tt, tt, ny // ty, ty, nx // tx, tx)
    # (L, T, tt, Y, ty, X, tx) -> (L, T, Y, X, tt, ty, tx): P holds a token's values in (t, lat, lon) C order
    return v.transpose(0, 1, 3, 5, 2, 4, 6).reshape(L, nt // tt, ny // ty, nx // tx, tt * ty * tx)


def untokenize(tokens_LTYXP: np.ndarray, token_size) -> np.ndarray:
    """Inverse of :func:`tokenize`."""
    tt, ty, tx = token_size
    L, T, Y, X, _ = tokens_LTYXP.shape
    v = tokens_LTYXP.reshape(L, T, Y, X, tt, ty, tx).transpose(0, 1, 4, 2, 5, 3, 6)
    return v.reshape(L, T * tt, Y * ty, X * tx)
