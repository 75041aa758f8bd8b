"""The figures of ``xensf.plot``: what they draw and what they refuse."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import xensf

pytest.importorskip("matplotlib")
import matplotlib.pyplot as plt

from xensf import plot


@pytest.fixture
def analysed():
    r = np.random.default_rng(0)
    prior = xr.Dataset(
        {"t": (("member", "lat", "lon"), 280 + r.standard_normal((6, 6, 8)), {"units": "K"})},
        coords={"lat": np.linspace(-60, 60, 6), "lon": np.arange(8) * 45.0},
    )
    obs = xr.full_like(prior.t[0], np.nan).to_dataset()
    obs.t[2, 3], obs.t[4, 5] = 282.0, 279.0
    analysis = prior.ensf.assimilate(obs, method="letkf", obs_error=0.5, loc_radius=3000.0)
    return prior, obs, analysis


@pytest.fixture
def kept(monkeypatch):
    """The figures the plot functions make, kept open for inspection."""
    figures = []

    def keep(fig, path, dpi=110):
        figures.append(fig)
        return path

    monkeypatch.setattr(plot, "_save", keep)
    yield figures
    for fig in figures:
        plt.close(fig)


def test_the_diagnostics_band_is_where_the_analysis_came_closer(analysed, kept, tmp_path):
    # The grey band |O − A| < |O − B| used to be drawn between two points only, which
    # filled the whole square: every observation looked improved.
    prior, obs, analysis = analysed
    diag = prior.ensf.innovations(obs, analysis, obs_error=0.5)
    histogram = analysis.ensf.rank_histogram(prior.t.isel(member=0))
    plot.plot_diagnostics(diag, {"analysis": histogram}, title="", path=tmp_path / "d.png")
    (fig,) = kept
    ax = fig.axes[0]
    band = ax.collections[0].get_paths()[0]
    limit = ax.get_xlim()[1]
    for x, y in [(0.5, 0.2), (-0.5, 0.2), (0.5, -0.4), (-0.8, -0.1)]:
        assert band.contains_point((x * limit, y * limit))
    for x, y in [(0.2, 0.5), (-0.2, 0.5), (0.1, -0.8), (-0.3, -0.6)]:
        assert not band.contains_point((x * limit, y * limit))


def test_the_diagnostics_without_a_truth_and_without_an_analysis(analysed, kept, tmp_path):
    prior, obs, analysis = analysed
    diag = prior.ensf.innovations(obs, analysis, obs_error=0.5)
    plot.plot_diagnostics(diag, {}, title="", path=tmp_path / "d.png")  # real data: no truth
    (fig,) = kept
    assert len(fig.axes) == 1  # the O − B / O − A panel of the one variable
    without = prior.ensf.innovations(obs, obs_error=0.5)
    with pytest.raises(xensf.OptionError, match="'oma'"):
        plot.plot_diagnostics(without, {}, title="", path=tmp_path / "d.png")


def test_maps_of_other_dims_are_refused_naming_the_argument(analysed, tmp_path):
    prior, obs, analysis = analysed
    truth = prior.t.isel(member=0)
    observed = obs.t.notnull()
    draw = plot.plot_analysis_maps
    with pytest.raises(xensf.DimensionError, match="truth must be a DataArray"):
        draw(prior, prior.t, {}, observed, member_dim="member", title="", path=tmp_path / "a")
    with pytest.raises(xensf.DimensionError, match=r"select one value of \['time'\]"):
        draw(truth.expand_dims(time=2), prior.t, {}, observed, member_dim="member", title="",
             path=tmp_path / "a")  # fmt: skip
    with pytest.raises(xensf.DimensionError, match="no dim member_dim='ens'"):
        draw(truth, prior.t, {}, observed, member_dim="ens", title="", path=tmp_path / "a")
    with pytest.raises(xensf.DimensionError, match="'letkf' has dims"):
        draw(truth, prior.t, {"letkf": analysis.t.isel(lat=0)}, observed, member_dim="member",
             title="", path=tmp_path / "a")  # fmt: skip
    path = draw(truth, prior.t, {"letkf": analysis.t}, observed, member_dim="member",
                title="", path=tmp_path / "maps.png")  # fmt: skip
    assert path.stat().st_size > 0


@pytest.mark.parametrize("size", [6, 8])
def test_maps_draw_every_field_on_the_truth_s_grid_whatever_its_dim_order(kept, tmp_path, size):
    # The error maps took the values in the order of the field's dims: a prior stored
    # (member, lon, lat) was drawn transposed on a square grid (its northern error in
    # the east) and was a raw matplotlib TypeError on another.
    lat, lon = np.linspace(-60, 60, size), np.arange(8) * 45.0
    truth = xr.DataArray(np.zeros((size, 8)), dims=("lat", "lon"), coords={"lat": lat, "lon": lon})
    prior = (truth + (truth.lat > 0) + xr.DataArray(np.zeros(5), dims="member")).transpose(
        "member", "lon", "lat"
    )
    observed = (truth == 0).transpose("lon", "lat") & (truth.lat < -50) & (truth.lon == 90)
    plot.plot_analysis_maps(truth.transpose("lon", "lat"), prior, {}, observed,
                            member_dim="member", title="", path=tmp_path / "m.png")  # fmt: skip
    plot.plot_twin_maps(truth, prior.mean("member"), {}, observed, title="",
                        path=tmp_path / "t.png")  # fmt: skip
    north = np.broadcast_to((lat > 0)[:, None], (size, 8)).astype(float)
    maps, twin = kept
    np.testing.assert_array_equal(np.asarray(maps.axes[1].collections[0].get_array()).reshape(
        size, 8), north)  # fmt: skip
    np.testing.assert_array_equal(np.asarray(twin.axes[3].collections[0].get_array()).reshape(
        size, 8), north)  # fmt: skip
    dot = maps.axes[0].collections[1].get_offsets()  # the observed point: (lon 90, lat -60)
    np.testing.assert_array_equal(np.asarray(dot), [[90.0, -60.0]])


def test_maps_take_every_field_s_points_by_their_labels(kept, tmp_path):
    # A field stored north to south (ERA5's order) under a truth south to north had
    # its values drawn on the truth's coordinates: the northern error in the south.
    lat, lon = np.linspace(-60, 60, 6), np.arange(8) * 45.0
    truth = xr.DataArray(np.zeros((6, 8)), dims=("lat", "lon"), coords={"lat": lat, "lon": lon})
    north = np.broadcast_to((lat > 0)[:, None], (6, 8)).astype(float)
    prior = truth + (truth.lat > 0) + xr.DataArray(np.zeros(5), dims="member")
    flipped = prior.isel(lat=slice(None, None, -1), lon=np.roll(np.arange(8), 3))
    observed = (truth == 0) & (truth.lat < -50) & (truth.lon == 90)
    plot.plot_analysis_maps(truth, flipped, {"a": prior.astype("float32")}, observed[::-1],
                            member_dim="member", title="", path=tmp_path / "m.png")  # fmt: skip
    plot.plot_twin_maps(truth, flipped.mean("member"), {}, observed, title="",
                        path=tmp_path / "t.png")  # fmt: skip
    maps, twin = kept
    for drawn in (maps.axes[1], maps.axes[2], twin.axes[3]):
        np.testing.assert_array_equal(np.asarray(drawn.collections[0].get_array()).reshape(6, 8),
                                      north)  # fmt: skip
    dot = maps.axes[0].collections[1].get_offsets()
    np.testing.assert_array_equal(np.asarray(dot), [[90.0, -60.0]])
    with pytest.raises(xensf.DimensionError, match="'a' is on another grid than the truth"):
        plot.plot_analysis_maps(truth, prior, {"a": prior.assign_coords(lat=lat + 1)}, observed,
                                member_dim="member", title="", path=tmp_path / "m.png")  # fmt: skip


def test_a_figure_that_cannot_be_written_is_not_left_open(analysed, tmp_path):
    prior, obs, analysis = analysed
    diag = prior.ensf.innovations(obs, analysis, obs_error=0.5)
    before = plt.get_fignums()
    # (matplotlib's FileNotFoundError and ValueError before)
    for path, match in [(tmp_path / "missing" / "d.png", "is no folder"),
                        (tmp_path / "d.xyz", "matplotlib writes .*not '.xyz'")]:  # fmt: skip
        with pytest.raises(xensf.OptionError, match=match):
            plot.plot_diagnostics(diag, {}, title="", path=path)
    assert plt.get_fignums() == before


def test_the_diagnostics_take_a_dataarray_histogram_and_refuse_what_they_cannot_draw(
    analysed, kept, tmp_path
):
    # a DataArray histogram (da.ensf.rank_histogram) was a raw AttributeError, and
    # innovations without an observation matplotlib's ValueError
    prior, obs, analysis = analysed
    diag = prior.ensf.innovations(obs, analysis, obs_error=0.5)
    truth = prior.t.isel(member=0)
    as_array = analysis.t.rename(None).ensf.rank_histogram(truth)
    plot.plot_diagnostics(diag, {"analysis": as_array}, title="", path=tmp_path / "d.png")
    plot.plot_diagnostics(diag, {"analysis": analysis.ensf.rank_histogram(truth)}, title="",
                          path=tmp_path / "d.png")  # fmt: skip
    one, other = kept
    for a, b in zip(one.axes[1].patches, other.axes[1].patches, strict=True):
        assert a.get_height() == b.get_height()
    empty = prior.ensf.innovations(obs * np.nan, analysis, obs_error=0.5)
    with pytest.raises(xensf.OptionError, match="hold no observation"):
        plot.plot_diagnostics(empty, {}, title="", path=tmp_path / "d.png")
    for histograms, match in [([as_array], "must be a mapping"),
                              ({"prior": prior}, r"histograms\['prior'\] must be")]:  # fmt: skip
        with pytest.raises(xensf.OptionError, match=match):
            plot.plot_diagnostics(diag, histograms, title="", path=tmp_path / "d.png")


def test_every_demo_method_has_its_own_colour():
    # latent-ensf-letkf had no style, so it took matplotlib's first colour: the blue of
    # ensf, and the headline figure showed two blue lines.
    from xensf.cli import SWE_METHODS

    styles = [plot.METHOD_STYLE[m] for m in ("free run", *SWE_METHODS)]
    assert len({s["color"] for s in styles}) == len(styles)


def test_a_long_title_is_broken_to_the_figure_width(analysed, kept, tmp_path):
    plot.plot_blend_weight(
        {"10%": xr.DataArray([0.9, 0.1], dims="time", coords={"time": [0.0, 1.0]})},
        title="latent-ensf-letkf: how far each cycle moved the prior towards the latent "
        "analysis (hard prior)",
        path=tmp_path / "b.png",
    )
    (fig,) = kept
    fig.canvas.draw()
    title = fig.axes[0].title
    assert "\n" in title.get_text()
    box = title.get_window_extent()
    assert box.x0 >= 0 and box.x1 <= fig.bbox.width


@pytest.mark.parametrize("kind", ["datetime64", "noleap", "numeric"])
def test_the_time_figures_take_every_kind_of_time_a_run_may_have(kind, kept, tmp_path):
    # Only datetime64 times were read: numeric (and cftime) times, which xensf.cycle
    # runs on, gave numpy's UFuncTypeError.
    if kind == "datetime64":
        times = np.array(["2000-01-01T06", "2000-01-01T12", "2000-01-01T18"], "datetime64[ns]")
    elif kind == "noleap":
        times = xr.date_range("2000-01-01T06", periods=3, freq="6h", calendar="noleap")
    else:
        times = np.array([6.0, 12.0, 18.0])
    curve = xr.DataArray([0.5, 0.2, 0.1], dims="time", coords={"time": times})
    plot.plot_relative_rmse({"10%": {"ensf": curve}}, title="", path=tmp_path / "r.png")
    plot.plot_blend_weight({"10%": curve}, title="", path=tmp_path / "b.png")
    for fig in kept:
        np.testing.assert_allclose(fig.axes[0].lines[0].get_xdata(), [6.0, 12.0, 18.0])
        assert fig.axes[0].get_xlabel() == (
            "model time" if kind == "numeric" else "model time [h]"
        )
