"""LETKF on spatial blocks: a prior chunked along latitude/longitude is analysed block by
block, and the result equals the analysis of the unchunked prior to rounding."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import xarray as xr
from test_cycle import assert_same_run  # bit for bit but the history line

import xensf
from xensf.errors import ChunkingError

OPTIONS = {"method": "letkf", "obs_error": 0.5, "inflation": 1.05}


def _global(dtype="float64"):
    rng = np.random.default_rng(0)
    lat, lon = np.linspace(-80, 80, 17), np.arange(24) * 15.0
    prior = xr.Dataset(
        {
            "t": (("time", "member", "lat", "lon"), 280 + rng.standard_normal((3, 8, 17, 24))),
            "z": (
                ("time", "member", "level", "lat", "lon"),
                5000 + 10 * rng.standard_normal((3, 8, 2, 17, 24)),
            ),
        },
        coords={"time": [0, 1, 2], "lat": lat, "lon": lon, "level": [500, 850]},
    ).astype(dtype)
    prior.t.attrs["units"], prior.z.attrs["units"] = "K", "m"
    stations = xr.Dataset(
        {"t": (("time", "station"), 280 + rng.standard_normal((3, 30)), {"units": "K"})},
        coords={
            "time": [0, 1, 2],
            "lat": ("station", rng.uniform(-70, 70, 30)),
            "lon": ("station", rng.uniform(-180, 180, 30)),  # across the dateline
        },
    )
    stations["t"][1, :10] = np.nan
    gridded = prior.t.isel(member=0).where(prior.lat % 20 == 0).to_dataset()
    return prior, stations, gridded


def _analyses(prior, obs, chunks, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", xensf.XensfWarning)
        whole = prior.ensf.assimilate(obs, **OPTIONS, **options)
        blocks = prior.chunk(chunks).ensf.assimilate(obs, **OPTIONS, **options)
    return whole, blocks


@pytest.mark.parametrize("kind", ["stations", "gridded"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_blocks_equal_the_whole_grid_on_a_sphere(kind, dtype):
    prior, stations, gridded = _global(dtype)
    obs = stations if kind == "stations" else gridded
    chunks = {"time": 2, "lat": 6, "lon": 10}
    whole, blocks = _analyses(prior, obs, chunks, loc_radius=1500.0)
    assert blocks.t.chunks == prior.chunk(chunks).t.chunks  # one task per block
    rtol = 1e-13 if dtype == "float64" else 1e-6  # float32: a unit in the last place
    for v in ("t", "z"):
        np.testing.assert_allclose(blocks[v].values, whole[v].values, rtol=rtol)
        assert float(abs(whole[v] - prior[v]).max()) > 0.1  # the analysis moved
    assert blocks.attrs["xensf_loc_radius"] == 1500.0


def test_blocks_equal_the_whole_grid_on_a_plane():
    rng = np.random.default_rng(1)
    prior = xr.Dataset(
        {"h": (("member", "y", "x"), rng.standard_normal((6, 20, 16)))},
        coords={"y": np.arange(20) * 10.0, "x": np.arange(16) * 10.0},
    )
    obs = prior.h.isel(member=0).where((prior.x % 30 == 0) & (prior.y % 40 == 0)).to_dataset()
    whole, blocks = _analyses(prior, obs, {"y": 7, "x": 5}, loc_radius=25.0)
    np.testing.assert_allclose(blocks.h.values, whole.h.values, rtol=0, atol=1e-10)


@pytest.mark.parametrize("adaptive", [False, True])
def test_a_block_no_observation_reaches_is_inflated_as_the_whole_grid_is(adaptive):
    """Stations in the northern rows only, and a radius that keeps them from the
    southern blocks: those blocks were returned as the prior, while the whole grid's
    analysis inflates every point of an observed time (its local analysis has no
    observation), so the two differed by the inflation (0.05 of the spread here)."""
    prior, stations, _ = _global()
    north = stations.where(stations.lat > 40)
    options = {**OPTIONS, "loc_radius": 300.0}
    if adaptive:  # the field's start inflates where no observation reaches
        del options["inflation"]
        options["adaptive_inflation"] = xensf.AdaptiveInflation(1.21)
    whole = prior.ensf.assimilate(north, **options)
    blocks = prior.chunk({"lat": 4, "lon": 12}).ensf.assimilate(north, **options)
    south = {"lat": slice(0, 4)}  # its own block, 2500 km and more from every station
    for v in ("t", "z"):
        np.testing.assert_allclose(blocks[v].values, whole[v].values, rtol=1e-13)
    spread = lambda ds: float(ds.t.isel(south).std("member").mean())  # noqa: E731
    assert spread(blocks) == pytest.approx((1.1 if adaptive else 1.05) * spread(prior), rel=1e-9)


def test_what_cannot_be_done_in_blocks_is_refused_with_the_remedy():
    prior, stations, _ = _global()
    split = prior.chunk(lat=6)
    with pytest.raises(ChunkingError, match=r"localised LETKF: give loc_radius="):
        split.ensf.assimilate(stations, **OPTIONS, loc_radius=None)
    with pytest.raises(ChunkingError, match=r"prior_score=.mixture.*couples every point"):
        split.ensf.assimilate(stations, method="ensf", obs_error=0.5)
    with pytest.raises(ChunkingError, match=r"30 of 30 lie between grid points"):
        split.ensf.assimilate(stations, method="ensf", obs_error=0.5, prior_score="paired")
    # the remedy in the data's own dim names (it said {lat: -1, lon: -1} whatever they were)
    era5_names = prior.rename(lat="latitude", lon="longitude").chunk(latitude=6)
    remedy = r"ds\.chunk\(\{'latitude': -1, 'longitude': -1\}\)"
    with pytest.raises(ChunkingError, match=remedy):
        era5_names.ensf.assimilate(stations, **OPTIONS, loc_radius=None)
    with pytest.raises(ChunkingError, match=remedy):
        era5_names.ensf.assimilate(stations, method="ensf", obs_error=0.5)
    with pytest.raises(ChunkingError, match=r"split into 3 chunks along 'lat'.*'ensf' with"):
        split.ensf.assimilate(stations, model=xensf.load(_model_path()), method="latent-ensf")


def _model_path():
    from xensf.experiments.demo_swe import shipped_model_path

    return shipped_model_path()


@pytest.mark.parametrize("scale", [None, {"t": 1.0, "z": 10.0}])
def test_paired_ensf_in_blocks_equals_the_whole_grid(scale):
    """Componentwise: each block with its own observations, the scale over the whole
    grid, the noise per tile of the whole grid; chunks that do not follow the tiles."""
    prior, _, gridded = _global()
    on_nodes = xr.Dataset(  # stations on grid points read one point each
        {"t": (("time", "station"), 281 + np.zeros((3, 4)), {"units": "K"})},
        coords={"time": [0, 1, 2], "lat": ("station", [-60.0, 0.0, 20.0, 70.0]),
                "lon": ("station", [15.0, 90.0, 180.0, 345.0])},
    )  # fmt: skip
    options = dict(method="ensf", obs_error=0.5, prior_score="paired", steps=20, scale=scale)
    for obs in (gridded, on_nodes):
        whole = prior.ensf.assimilate(obs, **options)
        blocks = prior.chunk({"time": 2, "lat": 5, "lon": 7}).ensf.assimilate(obs, **options)
        assert blocks.t.chunks == prior.chunk({"time": 2, "lat": 5, "lon": 7}).t.chunks
        for v in ("t", "z"):
            np.testing.assert_allclose(blocks[v].values, whole[v].values, rtol=1e-12)
        assert float(abs(whole.t - prior.t).max()) > 0.1  # the analysis moved


@pytest.mark.parametrize("seed", range(4))
def test_the_observation_routing_never_drops_one_within_reach(seed):
    import torch

    from xensf.bridge.spatial import within_reach
    from xensf.filters.localization import great_circle_distance
    from xensf.obs import grid_locations

    rng = np.random.default_rng(seed)
    lat0, lon0 = rng.uniform(-85, 60), rng.uniform(-180, 180)
    lat = lat0 + np.arange(6) * 4.0
    lon = (lon0 + np.arange(8) * 5.0 + 180) % 360 - 180  # may cross the dateline
    obs = np.stack([rng.uniform(-90, 90, 4000), rng.uniform(-180, 180, 4000)], -1)
    reach = float(rng.uniform(200, 3000))
    points = torch.as_tensor(grid_locations(lat, lon))
    dist = great_circle_distance(points, torch.as_tensor(obs)).min(0).values.numpy()
    kept = within_reach(obs, lat, lon, reach, spherical=True)
    assert kept[dist <= reach].all()
    assert kept.mean() < 0.9 or reach > 2500  # and it does leave the far ones out


def test_local_mixture_is_the_mixture_when_one_window_covers_the_grid():
    prior, _, gridded = _global()
    options = dict(method="ensf", obs_error=0.5, steps=20)
    mixture = prior.ensf.assimilate(gridded, **options)
    one = prior.ensf.assimilate(gridded, prior_score="local-mixture", window=24, **options)
    for v in ("t", "z"):
        np.testing.assert_allclose(one[v].values, mixture[v].values, rtol=1e-12)
    local = prior.ensf.assimilate(gridded, prior_score="local-mixture", window=4, **options)
    assert not np.allclose(local.t.values, mixture.t.values)  # the weights are local
    assert local.attrs["xensf_window"] == 4 and local.attrs["xensf_prior_score"] == "local-mixture"


def test_local_mixture_in_blocks_equals_the_whole_grid_and_needs_aligned_chunks():
    prior, stations, gridded = _global()
    options = dict(method="ensf", obs_error=0.5, steps=20, prior_score="local-mixture", window=4)
    whole = prior.ensf.assimilate(gridded, **options)
    blocks = prior.chunk({"time": 2, "lat": 8, "lon": 12}).ensf.assimilate(gridded, **options)
    for v in ("t", "z"):
        np.testing.assert_allclose(blocks[v].values, whole[v].values, rtol=1e-12)
    with pytest.raises(ChunkingError, match=r"chunks along 'lon' \(\[10, 10, 4\]\) cut"):
        prior.chunk({"lon": 10}).ensf.assimilate(gridded, **options)
    with pytest.raises(xensf.errors.OptionError, match="30 of 30 lie between grid points"):
        prior.ensf.assimilate(stations, **options)
    with pytest.raises(xensf.errors.OptionError, match="likelihood='damped'"):
        prior.ensf.assimilate(gridded, **{**options, "likelihood": "gaussian"})


@pytest.mark.parametrize("method", ["letkf", "ensf"])
def test_the_plan_is_one_key_of_the_graph_not_a_copy_in_every_task(method):
    """A keyword argument is pickled into every task: the plan (25 MB at 10⁵ stations on
    a 0.25° grid) must be one dependency that the tasks share."""
    import cloudpickle

    _, chunked, stations, options = _chunked_global(method)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", xensf.XensfWarning)
        for blocks in (chunked, chunked.chunk({"lat": -1, "lon": -1})):  # space, time
            out = blocks.ensf.assimilate(stations, **options)
            graph = dict(out.t.data.__dask_graph__())
            holding = [k for k, v in graph.items() if b"BlockPlan" in cloudpickle.dumps(v)]
            assert len(holding) == 1, holding


def _chunked_global(method):
    """The global case chunked along latitude/longitude, its observations and options."""
    prior, stations, _ = _global()
    if method == "letkf":
        options = {"loc_radius": 1500.0, "inflation": 1.05}
    else:  # each observation on one grid point
        stations = stations.assign_coords(
            lat=("station", prior.lat.values[np.arange(30) % 17]),
            lon=("station", prior.lon.values[np.arange(30) % 24]),
        )
        options = {"steps": 5, "prior_score": "paired"}
    chunked = prior.chunk({"time": 1, "lat": 6, "lon": 10})
    return prior, chunked, stations, {"method": method, "obs_error": 0.5, **options}


def _state_reads(result):
    """The tasks that make the prior's chunks (``Dataset.chunk`` names them after their
    variables), with the graph's dependencies and dependents."""
    from dask.core import get_deps
    from dask.utils import key_split

    graph = dict(result.t.data.__dask_graph__())
    deps, dependents = get_deps(graph)
    reads = [k for k in graph if key_split(k) in ("xarray-t", "xarray-z")]
    return reads, deps, dependents


#: chunk reads of the whole-grid gathers: t's for the LETKF's stations, t's and z's
#: for the EnSF's spread per field
GATHERED = {"letkf": 27, "ensf": 2 * 27}


#: a region cut from the global grid, as ``ds.sel`` of a chunked store cuts one
REGION = {"lat": slice(-45, 45), "lon": slice(30, 300)}


def _within(stations, ds):
    """The stations inside ``ds``'s grid."""
    inside = (stations.lat >= ds.lat.min()) & (stations.lat <= ds.lat.max())
    inside &= (stations.lon >= ds.lon.min()) & (stations.lon <= ds.lon.max())
    return stations.where(inside, drop=True)


def _cluster(distributed):
    """A small in-process distributed cluster."""
    return distributed.Client(
        processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None
    )


@pytest.mark.parametrize("method", ["letkf", "ensf"])
def test_the_whole_grid_gathers_read_their_own_chunks(method):
    """Every block needs the prior at all observations (LETKF) or its spread over the
    whole grid (EnSF). Were those gathers to share the blocks' chunk reads, each chunk
    would stay in memory from the gather until its block ran: at 0.25° with stations
    everywhere, the whole observed state."""
    from dask.utils import key_split

    prior, chunked, stations, options = _chunked_global(method)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", xensf.XensfWarning)
        out = chunked.ensf.assimilate(stations, **options)
        whole = prior.ensf.assimilate(stations, **options)
    reads, _, dependents = _state_reads(out)
    assert len(reads) == 2 * 27 + GATHERED[method]  # each block's own, and the gathers'
    feeds = [{key_split(d) for d in dependents[k]} for k in reads]
    # a block (its inputs are transposed to the mapping's order) or a gather, not both
    assert sum(f == {"transpose"} for f in feeds) == 2 * 27
    assert not any("transpose" in f for f in feeds if f != {"transpose"}), feeds
    for v in ("t", "z"):
        np.testing.assert_allclose(out[v].values, whole[v].values, rtol=1e-12)


@pytest.mark.parametrize("method", ["letkf", "ensf"])
def test_on_a_cluster_no_block_is_read_before_the_gathers_end(method):
    """Distributed would read blocks (root tasks) while the gathers run, and hold them:
    with a client, the blocks' reads depend on the gathers. Without one they stay root
    tasks, which the local schedulers order better."""
    distributed = pytest.importorskip("distributed")
    _, chunked, stations, options = _chunked_global(method)

    def roots(out):
        reads, deps, _ = _state_reads(out)
        return [k for k in reads if not deps[k]]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", xensf.XensfWarning)
        local = chunked.ensf.assimilate(stations, **options)
        with _cluster(distributed):
            clustered = chunked.ensf.assimilate(stations, **options)
            got = clustered.compute()
    assert len(roots(local)) == 2 * 27 + GATHERED[method]
    assert len(roots(clustered)) == GATHERED[method]  # the blocks' reads wait for them
    xr.testing.assert_allclose(got, local.compute(), rtol=1e-12)


@pytest.mark.parametrize(
    "options",
    [
        {**OPTIONS, "loc_radius": 1500.0},
        {"method": "ensf", "obs_error": 0.5, "prior_score": "paired"},
    ],
)
def test_zero_stations_leave_the_blocks_unchanged(options):
    # the gather of the prior at no observation had no time and member dims, and the
    # blocks failed with a raw ValueError from xarray
    prior, stations, _ = _global()
    none = stations.isel(station=slice(0, 0))
    chunked = prior.chunk({"lat": 6, "lon": 10})
    whole, blocks = (p.ensf.assimilate(none, **options) for p in (prior, chunked))
    assert_same_run(blocks.compute(), whole)  # their history lines' seconds may differ
    np.testing.assert_array_equal(whole.t.values, prior.t.values)


@pytest.mark.parametrize("method", ["letkf", "ensf"])
def test_a_region_cut_from_a_chunked_prior_and_a_grid_from_180w_are_analysed_in_blocks(method):
    """A prior opened chunked and then cut to a region (``ds.sel``), or a global grid
    from -180° (which EnSF rolls to start at 0°), gave dask graphs of sliced chunks,
    whose copies for the whole-grid gathers read the original's chunks: dask's task
    fusion failed on them with a raw ValueError."""
    from dask.utils import key_split

    prior, chunked, stations, options = _chunked_global(method)
    from_180w = prior.assign_coords(lon=(prior.lon + 180.0) % 360.0 - 180.0).sortby("lon")
    cases = [
        (prior.sel(REGION), chunked.sel(REGION)),
        (from_180w, from_180w.chunk({"time": 1, "lat": 6, "lon": 10})),
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", xensf.XensfWarning)
        for whole, blocks in cases:
            near = _within(stations, whole)
            expected = whole.ensf.assimilate(near, **options)
            out = blocks.ensf.assimilate(near, **options)
            graph = dict(out.t.data.__dask_graph__())
            # every task of the copies is renamed in full: its own key and its inputs'
            assert all(getattr(node, "key", key) == key for key, node in graph.items())
            cut = [k for k in graph if key_split(k) == "getitem"]
            assert cut and {k[0] for k in cut} != {cut[0][0]}  # the blocks' and the copies'
            for v in ("t", "z"):
                np.testing.assert_allclose(out[v].values, expected[v].values, rtol=1e-12)


@pytest.mark.parametrize("method", ["letkf", "ensf"])
def test_a_region_cut_from_a_chunked_prior_is_analysed_on_a_cluster(method):
    """The blocks' reads bound to the gathers on a cluster: dask's ``bind`` left the
    cut chunks' tasks with their old keys, and the cluster cancelled the analysis for
    "lost dependencies"."""
    distributed = pytest.importorskip("distributed")
    prior, chunked, stations, options = _chunked_global(method)
    near = _within(stations, prior.sel(REGION))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", xensf.XensfWarning)
        expected = prior.sel(REGION).ensf.assimilate(near, **options)
        with _cluster(distributed):
            got = chunked.sel(REGION).ensf.assimilate(near, **options).compute()
    xr.testing.assert_allclose(got, expected, rtol=1e-12)


@pytest.mark.parametrize("method", ["letkf", "ensf"])
def test_a_prior_persisted_on_a_cluster_is_analysed_in_blocks(method):
    """A persisted prior's graph holds futures: the gathers' copies must share them
    (the cluster holds their data), or it cancels the analysis for lost dependencies."""
    distributed = pytest.importorskip("distributed")
    prior, chunked, stations, options = _chunked_global(method)
    near = _within(stations, prior.sel(REGION))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", xensf.XensfWarning)
        expected = prior.ensf.assimilate(stations, **options)
        expected_cut = prior.sel(REGION).ensf.assimilate(near, **options)
        with _cluster(distributed):
            held = chunked.persist()
            got = held.ensf.assimilate(stations, **options).compute()
            got_cut = held.sel(REGION).ensf.assimilate(near, **options).compute()
    xr.testing.assert_allclose(got, expected, rtol=1e-12)
    xr.testing.assert_allclose(got_cut, expected_cut, rtol=1e-12)
