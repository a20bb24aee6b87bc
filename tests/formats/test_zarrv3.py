"""The zarr v3 module against independent implementations: what it writes reads back bit for bit
through zarr-python (its own codec pipeline and zarrs') and tensorstore; what zarr-python writes is
read identically by the mmap reader or refused naming the file; importing atmorep leaves zarr's
configuration alone."""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys

import numpy as np
import pytest
import tensorstore as ts
import xarray as xr
import zarr

from atmorep.formats import zarrv3

PIPELINES = {"zarr-python": zarrv3.PYTHON, "zarrs": zarrv3.ZARRS}
DIMS = ("time", "level", "latitude", "longitude")


def bits(a: np.ndarray) -> np.ndarray:
    """Compare values by their bits: NaN equals NaN, -0.0 differs from 0.0."""
    a = np.ascontiguousarray(a)
    return a.view(f"u{a.dtype.itemsize}")


def through_zarr(path, pipeline: str) -> np.ndarray:
    with zarr.config.set({"codec_pipeline.path": pipeline}):
        a = zarr.open_array(str(path), mode="r")
        assert type(a._async_array.codec_pipeline).__name__ == pipeline.rsplit(".", 1)[1]
        return a[...]


def through_tensorstore(path) -> np.ndarray:
    spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(path)}}
    return ts.open(spec, read=True).result().read().result()


def read_everywhere(path) -> dict[str, np.ndarray]:
    """The whole array as each independent reader returns it."""
    got = {name: through_zarr(path, p) for name, p in PIPELINES.items()}
    got["tensorstore"] = through_tensorstore(path)
    return got


@pytest.fixture(scope="module")
def normalized(tmp_path_factory):
    """A store shaped like `atmorep normalize` output, time chunks not dividing the month (edge
    chunks padded) and local statistics chunked per level."""
    rng = np.random.default_rng(1)
    T, L, Y, X = 10, 3, 7, 12
    values = rng.standard_normal((T, L, Y, X), dtype=np.float32)
    coords = {
        "time": (np.arange(T, dtype=np.int64) + 447_000, {"units": "hours since 1970-01-01 00:00:00"}),
        "level": (np.array([0, 500, 850], np.int64), {}),
        "latitude": (np.linspace(60, 45, Y), {"units": "degrees_north"}),
        "longitude": (np.arange(X) * 2.5, {"units": "degrees_east"}),
    }
    mean = rng.standard_normal((L, Y, X)).astype(np.float32)
    out = tmp_path_factory.mktemp("regular") / "n.zarr"
    with zarrv3.writing(out, {"field": "t", "month": "2021-01"}, nbytes=values.nbytes) as store:
        for name, (v, attrs) in coords.items():
            store.put(name, v, (name,), attrs)
        store.put("mean", mean, DIMS[1:], {"units": "K"}, chunks=(1, Y, X))
        data = store.create("data", values.shape, np.float32, (4, 1, Y, X), DIMS, {"units": "1"})
        data.write(0, values[:8])
        data.write(8, values[8:])  # the last block ends at the array's end, mid-chunk
    return out, values, mean, coords


def test_regular_store_reads_identically_everywhere(normalized):
    out, values, mean, coords = normalized
    for name, want in {"data": values, "mean": mean, **{c: v for c, (v, _) in coords.items()}}.items():
        for reader, got in read_everywhere(out / name).items():
            assert got.dtype == want.dtype and np.array_equal(bits(got), bits(want)), (name, reader)
    ds = xr.open_zarr(out, consolidated=False)  # plain xarray: dimensions, attributes, decoded times
    assert ds["data"].dims == DIMS and ds.attrs == {"field": "t", "month": "2021-01"}
    assert ds["time"].values[0] == np.datetime64("2020-12-29T00", "ns") and ds["mean"].attrs["units"] == "K"
    np.testing.assert_array_equal(ds["data"].values, values)


def test_metadata_is_what_zarr_python_writes(tmp_path):
    """The hand-written zarr.json equals zarr-python's for the same regular and sharded arrays."""
    g = zarr.open_group(str(tmp_path / "zp.zarr"), mode="w", zarr_format=3)
    for name, kw in {
        "regular": {"chunks": (4, 1, 7, 12), "fill_value": np.nan, "dtype": "float32"},
        "ints": {"chunks": (3,), "fill_value": 0, "dtype": "int64"},
        "sharded": {"chunks": (3, 3, 9, 9), "shards": (12, 3, 18, 27), "fill_value": np.nan, "dtype": "float32"},
    }.items():
        shape = (3,) if name == "ints" else (10, 3, 20, 36)
        dims = DIMS[: len(shape)]
        g.create_array(name, shape=shape, compressors=None, dimension_names=dims, attributes={"a": 1}, **kw)
        ours = zarrv3.array_metadata(shape, kw["dtype"], kw["chunks"], dims, {"a": 1}, shards=kw.get("shards"))
        assert ours == json.loads((tmp_path / "zp.zarr" / name / "zarr.json").read_text()), name


@pytest.fixture(scope="module")
def token_store(tmp_path_factory):
    """A dense sharded token store: edge shards not full in time, latitude and longitude, and a time
    extent that is not whole chunks (the last chunk padded)."""
    rng = np.random.default_rng(2)
    shape, chunks, shards = (50, 2, 36, 45), (3, 2, 4, 5), (12, 2, 16, 20)
    values = rng.standard_normal(shape, dtype=np.float32)
    out = tmp_path_factory.mktemp("token") / "s.zarr"
    template = xr.Dataset(coords={"time": np.arange(shape[0])}, attrs={"field": "u"})
    with zarrv3.writing(out, nbytes=values.nbytes, template=template) as store:
        arr = store.create_sharded("data", shape, chunks, shards, DIMS, {"units": "1"})
        for t0 in range(0, shape[0], shards[0]):
            for y0 in range(0, shape[2], shards[2]):
                arr.write((t0, 0, y0, 0), values[t0 : t0 + shards[0], :, y0 : y0 + shards[2]])
    return out, values, chunks


def test_dense_shard_store_reads_identically_everywhere(token_store):
    out, values, chunks = token_store
    meta = json.loads((out / "data" / "zarr.json").read_text())
    assert meta["codecs"][0]["configuration"]["index_location"] == "end"
    dense = zarrv3.DenseShards(out / "data")
    assert dense.check_all() == 5 * 1 * 3 * 3
    for reader, got in read_everywhere(out / "data").items():
        assert np.array_equal(bits(got), bits(values)), reader
    ds = xr.open_zarr(out, consolidated=False)
    assert ds.attrs == {"field": "u"} and ds["data"].attrs == {"units": "1"}
    np.testing.assert_array_equal(ds["data"].values, values)
    # and through our own reader: chunks (T, Lc, Y, X, tt, L, ty, tx) back to (T, L, Y, X)
    blk = dense.read((0, 0, 0, 0), dense.grid)
    T, _, Y, X = (g * c for g, c in zip(dense.grid, chunks))
    whole = blk.transpose(0, 4, 1, 5, 2, 6, 3, 7).reshape(T, 2, Y, X)
    assert np.array_equal(bits(whole[: values.shape[0]]), bits(values))
    assert np.isnan(whole[values.shape[0] :]).all()  # the padding of the last time chunk is the fill


@pytest.mark.parametrize("pipeline", list(PIPELINES))
def test_a_store_zarr_python_writes_is_read_identically_or_refused_naming_the_file(token_store, tmp_path, pipeline):
    _, values, chunks = token_store
    path = tmp_path / "zp.zarr"
    with zarr.config.set({"codec_pipeline.path": PIPELINES[pipeline]}):
        a = zarr.create_array(
            str(path), shape=values.shape, dtype="float32", chunks=chunks, shards=(12, 2, 16, 20), compressors=None
        )
        a[...] = values
    dense = zarrv3.DenseShards(path)
    try:
        blk = dense.read((0, 0, 0, 0), dense.grid)
    except zarrv3.NotDense as exc:
        assert str(path / "c") in str(exc) and "not in C order" in str(exc)  # zarr-python: Morton order
    else:
        T, _, Y, X = (g * c for g, c in zip(dense.grid, chunks))
        got = blk.transpose(0, 4, 1, 5, 2, 6, 3, 7).reshape(T, 2, Y, X)[: values.shape[0]]
        assert np.array_equal(bits(got), bits(values))


def test_importing_atmorep_leaves_zarrs_configuration_alone(token_store):
    code = (
        "import zarr; before = dict(zarr.config.get('codec_pipeline'))\n"
        "import atmorep.cli, atmorep.data.dataset, atmorep.data.shards, atmorep.data.normalize\n"
        "from atmorep.formats import zarrv3\n"
        f"a = zarrv3.open_array({str(token_store[0] / 'data')!r})\n"
        "assert dict(zarr.config.get('codec_pipeline')) == before, zarr.config.get('codec_pipeline')\n"
        "print(type(a._async_array.codec_pipeline).__name__, before['path'])\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["ZarrsCodecPipeline", zarrv3.PYTHON]


def _read_in_child(path, queue) -> None:
    a = zarrv3.open_array(path, forked=True)
    queue.put(float(np.nansum(a[:24, :, :16])))


@pytest.mark.timeout(120)
def test_a_forked_child_reads_after_its_parent_used_zarrs_thread_pool(token_store, tmp_path):
    """zarrs' thread pool does not survive fork: the parent writes through it (every core), the
    child reads through open_array(forked=True)."""
    _, values, chunks = token_store
    path = tmp_path / "zstd.zarr"
    with zarrv3.pipeline(None):
        zarr.create_array(str(path), shape=values.shape, dtype="float32", chunks=chunks, shards=(12, 2, 16, 20))[
            ...
        ] = values
    queue = multiprocessing.get_context("fork").Queue()
    child = multiprocessing.get_context("fork").Process(target=_read_in_child, args=(str(path), queue))
    child.start()
    child.join(90)
    assert child.exitcode == 0, "the forked child hung or failed"
    assert queue.get(timeout=5) == pytest.approx(float(np.nansum(values[:24, :, :16])), rel=1e-5)
