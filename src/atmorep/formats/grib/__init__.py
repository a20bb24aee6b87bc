"""GRIB in and out: the codec every stage reads ERA5 through, in the layers it is built of.

- :mod:`.messages`: a file split into its raw messages (:class:`Raw`: offset, length, bytes) by
  :func:`iter_raw`, hashing every byte on the way; GRIB1 messages over 8 MB included.
- :mod:`.grid`: :class:`Grid`, the grid a message is on and the map of its values to canonical order
  (latitude north to south, longitude ascending), made by :func:`grid_from_handle`; :func:`periodic`.
- :mod:`.decode`: what a message is (:class:`Param`, :class:`Level`, :class:`Header`) and its values,
  through ecCodes with cached identities (:class:`Decoder`, :func:`scan`, :func:`values`,
  :func:`handle`); :func:`check_file`; :func:`decode`, a whole small file as one array.
- :mod:`.write`: :func:`write_grib`, fields as GRIB messages; :func:`set_values`, NaN into the bitmap
  (also for the messages acquire cuts to an area).

Callers import from here (``from atmorep.formats import grib; grib.scan(path)``), not from the modules.
"""

from atmorep.formats.grib.decode import (
    SURFACE_TYPES,
    Decoder,
    Header,
    Level,
    Param,
    check_file,
    decode,
    handle,
    scan,
    values,
)
from atmorep.formats.grib.grid import Grid, grid_from_handle, periodic
from atmorep.formats.grib.messages import Raw, iter_raw
from atmorep.formats.grib.write import set_values, write_grib

__all__ = [
    "SURFACE_TYPES",
    "Decoder",
    "Grid",
    "Header",
    "Level",
    "Param",
    "Raw",
    "check_file",
    "decode",
    "grid_from_handle",
    "handle",
    "iter_raw",
    "periodic",
    "scan",
    "set_values",
    "values",
    "write_grib",
]
