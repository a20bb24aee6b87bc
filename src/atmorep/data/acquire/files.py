"""The ``files`` source: GRIB an HPC centre mirrors (MARS retrievals, ERA5 on disk).

``acquire.files.paths`` names directories (searched recursively) or glob patterns. Files may hold
any mix of fields, several files may make up one month, and GRIB1 and GRIB2, either latitude order
and 0..360 or -180..180 longitudes may be mixed: what matters is the canonical grid. For one
(field, month) the source selects the messages of the field on its level type and levels
(``data.fields.<f>.levtype``, matched against each message's typeOfLevel), its ensemble member
(``acquire.files.member``) and valid times inside the month and campaign, checks that they are on
one usable grid containing ``data.area`` and that no expected (level, time) combination is missing
(naming each missing one), and writes them in (time, level) order: raw message bytes when the grid
is regular lat/lon and is the area, the area cut out (:mod:`.crop`: values as 32-bit IEEE, exactly
what a direct read decodes) when it is bigger, regridded values otherwise (``acquire.regrid``). With
``acquire.derive_vorticity`` vo and d are computed from u and v when the files have no vo or d.

Nothing is chosen silently: several members without ``acquire.files.member``, or two different
messages for one (valid time, level) (two level types, two members, step 0 of one run and step 6 of
the previous without ``acquire.files.same_valid_time``) are refused naming both messages. What was
cut from where is recorded beside the output (:func:`atmorep.data.acquire.sources.provenance_path`).

Finding the files and their cached inventories is :mod:`.mirror`, choosing the messages
:mod:`.selection`, cutting the area :mod:`.crop`; this module is the source itself, which puts them
together and writes the unit.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from atmorep.config import AcquireConfig, DataConfig
from atmorep.data.acquire import regrid
from atmorep.data.acquire.crop import area_indices, crop_message, describe_cut, is_whole
from atmorep.data.acquire.inventory import Expectation, config_level, matches
from atmorep.data.acquire.mirror import Index, Located, decode_located, expand, is_netcdf, read_message
from atmorep.data.acquire.protocol import ConfiguredGrid
from atmorep.data.acquire.selection import complete, in_area, one_grid, select, why_none
from atmorep.errors import DataError
from atmorep.formats import grib

log = logging.getLogger(__name__)


class FilesSource(ConfiguredGrid):
    # the files' grid without data.grid; GRIB messages as mirrored (ERA5: 16 bits), cut ones and NetCDF
    # values as 32-bit IEEE (bits)
    name = "the files"
    honours = ConfiguredGrid.honours | {"acquire.regrid", "acquire.variables", "acquire.derive_vorticity"}

    skipped: list[str] = []  # NetCDF files of the field that hold nothing of the unit (fetch_netcdf)

    def bits(self, data: DataConfig) -> int:
        return 32 if data.area else 16

    def problems(self, data: DataConfig, cfg: AcquireConfig) -> list[str]:
        empty = [] if cfg.files.paths else ["acquire.source is 'files' but acquire.files.paths is empty"]
        return super().problems(data, cfg) + empty

    def fetch(self, data: DataConfig, cfg: AcquireConfig, field: str, month: str, out: Path) -> dict:
        paths = expand(cfg.files.paths)
        if not cfg.files.paths:
            raise DataError("acquire.source is 'files' but acquire.files.paths is empty")
        if not paths:
            raise DataError(f"acquire.files.paths {list(cfg.files.paths)} matched no GRIB file")
        # NetCDF first: it may hold the field (then the GRIB must not) or not (then GRIB is read below).
        netcdf = [p for p in paths if is_netcdf(p)]
        if netcdf:  # NetCDF is read through xarray (atmorep.data.acquire.gridded); GRIB below
            paths = [p for p in paths if p not in netcdf]
            prov = self.fetch_netcdf(netcdf, paths, data, cfg, field, month, out)
            if prov is not None:
                return prov
        exp = Expectation.for_month(data, field, month, cfg.regrid)
        index = Index(cfg.files.index_dir)
        mirror = [Located(p, h) for p in paths for h in index.headers(p)]
        # Messages of other months are not selected, of other regions skipped: neither has its grid judged.
        chosen = in_area(select(mirror, exp, field, cfg.files.member), exp)
        # Derived only when the files lack the field: a vo or d the files hold is used as delivered.
        if not chosen and cfg.derive_vorticity and field in ("vo", "d"):
            return self.derive(mirror, exp, data, cfg, field=field, month=month, out=out)
        if not chosen:
            skipped = "; ".join(self.skipped[:3]) + (" ..." if len(self.skipped) > 3 else "")
            raise DataError(
                why_none(mirror, exp, field, month, len(paths)) + (f"; NetCDF skipped: {skipped}" * bool(skipped))
            )
        # The grid check first: its error names a file, and complete() reads message bytes.
        grid = one_grid(chosen, exp)
        chosen = complete(chosen, exp, cfg.files.same_valid_time)
        crop = self.write(chosen, grid, data, field, out)
        return {
            "source": "files",
            "field": field,
            "month": month,
            "levtype": exp.kind,
            "member": cfg.files.member,
            "same_valid_time": cfg.files.same_valid_time,
            "files": sorted({str(loc.path) for loc in chosen}),
            "crop": crop,
        }

    @staticmethod
    def write(chosen: list[Located], grid: grib.Grid, data: DataConfig, field: str, out: Path) -> dict | None:
        """Write the messages (cut to data.area when the grid is bigger); the crop done, if any."""
        if grid.regular:
            rows, cols = area_indices(grid.lats, grid.lons, data.area)
            whole = is_whole(grid, rows, cols)
            with open(out, "wb") as f:
                for loc in chosen:
                    msg = read_message(loc)
                    # Whole grid: the mirror's bytes unchanged (nothing decoded, nothing repacked).
                    f.write(msg if whole else crop_message(msg, loc.header, rows, cols, data.area))
            if whole:
                return None
            log.info(
                "files: cut %s %s out of %s (rows %d..%d, columns %d..%d)",
                field,
                data.area,
                grid.describe(),
                rows[0],
                rows[-1],
                cols[0],
                cols[-1],
            )
            return describe_cut(grid, data.area, rows, cols)
        if data.grid is None:
            raise DataError(f"files: field '{field}' is on {grid.describe()}: regridding needs data.grid")
        lats, lons = regrid.target_grid(*data.grid)
        spec = data.fields[field]
        times = sorted({loc.header.time for loc in chosen})
        levels = list(spec.levels)
        values = np.empty((1, len(levels), len(lats), len(lons)), np.float32)
        # append=True from the first step on: ``out`` is the fresh temporary file acquire made.
        for t in times:  # one time step at a time keeps memory bounded
            for loc in (x for x in chosen if x.header.time == t):
                lev = config_level(loc.header.level, spec.kind)
                assert lev is not None  # select() kept only messages on the field's level type
                values[0, levels.index(lev)] = regrid.gaussian_to_regular(
                    decode_located(loc), loc.header.grid, lats, lons
                )
            grib.write_grib(
                out, field, values, np.array([t]), levels, lats, lons, bits_per_value=24, levtype=spec.kind, append=True
            )
        log.info("files: regridded %s from %s to %gx%g", field, grid.describe(), *data.grid)
        return None

    def derive(
        self,
        mirror: list[Located],
        exp: Expectation,
        data: DataConfig,
        cfg: AcquireConfig,
        *,
        field: str,
        month: str,
        out: Path,
    ) -> dict:
        """vo or d from u and v (see :mod:`atmorep.data.acquire.vorticity`); the unit's provenance."""
        from atmorep.data.acquire.vorticity import vorticity_divergence

        winds = {}
        for comp in ("u", "v"):
            sel = select(mirror, exp, comp, cfg.files.member)
            if not sel:
                raise DataError(f"files: no '{field}' and no '{comp}' to derive it from (acquire.derive_vorticity)")
            one_grid(sel, exp)
            winds[comp] = {
                (loc.header.time, config_level(loc.header.level, exp.kind)): loc
                for loc in complete(sel, exp, cfg.files.same_valid_time)
            }
        if winds["u"].keys() != winds["v"].keys():
            raise DataError(f"files: u and v cover different (time, level) combinations; cannot derive '{field}'")
        grid = next(iter(winds["u"].values())).header.grid
        if not grid.regular:
            raise DataError(f"files: deriving '{field}' needs u and v on a regular lat/lon grid, not {grid.describe()}")
        spec = data.fields[field]
        levels = list(spec.levels)
        # derived on the whole grid (the differences need the neighbours), then cut to data.area
        rows, cols = area_indices(grid.lats, grid.lons, data.area)
        # In the area's own longitude convention (west edge first), as crop_message writes a cut.
        lons = grid.lons if data.area is None else float(data.area[1]) + grid.dlon * np.arange(len(cols))
        for t in sorted({k[0] for k in winds["u"]}):
            values = np.empty((1, len(levels), len(rows), len(cols)), np.float32)
            for il, lev in enumerate(levels):
                u_loc, v_loc = winds["u"][(t, lev)], winds["v"][(t, lev)]
                u = u_loc.header.grid.to_canonical(decode_located(u_loc))
                v = v_loc.header.grid.to_canonical(decode_located(v_loc))
                vo, d = vorticity_divergence(u, v, grid.lats, grid.lons)
                values[0, il] = (vo if field == "vo" else d)[np.ix_(rows, cols)]
            grib.write_grib(
                out,
                field,
                values,
                np.array([t]),
                levels,
                grid.lats[rows],
                lons,
                bits_per_value=24,
                levtype=spec.kind,
                append=True,
            )
        log.info("files: derived %s from u and v on %s", field, grid.describe())
        return {
            "source": "files",
            "field": field,
            "month": month,
            "levtype": exp.kind,
            "member": cfg.files.member,
            "same_valid_time": cfg.files.same_valid_time,
            "derived_from": ["u", "v"],
            "files": sorted({str(loc.path) for w in winds.values() for loc in w.values()}),
            "crop": None if is_whole(grid, rows, cols) else describe_cut(grid, data.area, rows, cols),
        }

    def fetch_netcdf(
        self,
        netcdf: list[Path],
        grib_paths: list[Path],
        data: DataConfig,
        cfg: AcquireConfig,
        field: str,
        month: str,
        out: Path,
    ) -> dict | None:
        """Write the field from NetCDF when a NetCDF file holds it and return its provenance (None: none
        does, try the GRIB)."""
        import xarray as xr

        from atmorep.data.acquire import gridded

        opened = []
        try:
            for p in netcdf:
                try:
                    opened.append((str(p), xr.open_dataset(p)))
                except Exception as exc:
                    raise DataError(f"{p}: cannot open as NetCDF ({type(exc).__name__}: {exc})") from None
            exp = Expectation.for_month(data, field, month, cfg.regrid)
            # Holding the field means holding some of this unit: files of other years and regions do not.
            _, inside, self.skipped = gridded.holding(opened, field, exp, cfg.variables, "files")
            holding = [where for where, _, _ in inside]
            if not holding:
                if grib_paths:
                    return None
                # No GRIB either: gridded.fetch below refuses, naming what the NetCDF holds.
            else:
                index = Index(cfg.files.index_dir)
                both = [
                    p
                    for p in grib_paths
                    if any(matches(h, field) and exp.first <= h.time <= exp.last for h in index.headers(p))
                ]
                if both:
                    raise DataError(
                        f"files: field '{field}' is in NetCDF ({holding[0]}) and in GRIB "
                        f"({both[0]}); keep one of them in acquire.files.paths"
                    )
            prov = gridded.fetch(opened, data, cfg, field, month, out, "files")
        finally:
            for _, ds in opened:
                ds.close()
        log.info(
            "files: %s %s from NetCDF %s", field, month, ", ".join(f"{w} ({v})" for w, v in prov["variables"].items())
        )
        return prov
