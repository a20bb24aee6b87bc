"""Normalize: decode one (field, month) of GRIB, check it, compute AtmoRep statistics, apply them.

Modules, in the order of the passes: :mod:`.decode` (pass 1, with the QC gate :mod:`.qc`, into a
:mod:`.slabs` slab), :mod:`.statistics` (pass 2), :mod:`.store` (pass 3: normalize and write), and
:mod:`.stage` (the stage functions the CLI calls, re-exported here).

AtmoRep normalizes per field, level and (year, month): *global* uses one mean/std per level over
all grid points and hours of the month, *local* one mean/std per grid point over the month's hours.
The *climatological* option takes the statistics of a training period instead (per calendar month
or over the whole period), so a predicted month does not leak into its own normalization. The
inverse ``x = x' * std + mean`` uses the stored statistics.

Bounded memory: a month is decoded message by message into a *slab* (in memory when it fits
``normalize.memory_mb``, else a scratch file), its statistics accumulate over time blocks with
Chan's parallel form of Welford's algorithm in float64, and it is normalized and written block by
block. Peak memory is the slab (if in memory) plus a few blocks of ``normalize.block_mb``.

Store (zarr v3, one per field and month): ``data (time, level, latitude, longitude)`` float32
normalized; ``mean``/``std`` ``(level,)`` for global or ``(level, latitude, longitude)`` for local;
attrs ``field``, ``month``, ``normalization`` (global/local: the shape of mean/std), ``statistics``
(monthly/climatology), ``statistics_period``, ``source``, ``source_sha256``, ``provenance``.

Legend: T time steps, L levels, Y latitude rows, X longitude columns.
"""

from atmorep.data.normalize.stage import Climatology, climatology, moments, normalize
from atmorep.data.normalize.store import check

__all__ = ["Climatology", "check", "climatology", "moments", "normalize"]
