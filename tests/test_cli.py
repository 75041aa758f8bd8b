"""The ``xensf`` command: version, help, ``python -m xensf`` and ``xensf info``."""

from __future__ import annotations

import subprocess
import sys
from importlib.resources import files

import pytest

import xensf
from xensf.cli import main


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert (
        exit_.value.code == 0 and capsys.readouterr().out.strip() == f"xensf {xensf.__version__}"
    )
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "``" not in text and "info" in text and "demo-era5" in text


def test_python_dash_m_is_the_command():
    done = subprocess.run(
        [sys.executable, "-m", "xensf", "--version"], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == f"xensf {xensf.__version__}"


def test_info_describes_the_shipped_model(capsys):
    bundle = files("xensf") / "data" / "swe-demo.xensf"
    assert main(["info", str(bundle)]) == 0
    text = capsys.readouterr().out
    assert "latent      4 x 10 x 10" in text and "40 x 40" in text
    recorded = xensf.load(bundle).config["quality"]["relative_rmse"][0]
    assert f"eta          {recorded:.3f}" in text  # the validation error of each channel
    assert "13770 training, 1530 validation states" in text
    assert "100 points per field (300 values in all)" in text
    assert "gaps        trained on whole layouts only" in text
    assert "layout      its grid points recorded" in text
    assert "decoded observation error 0.652 with half the layout, 0.068 whole" in text


def test_info_names_the_level_of_each_channel(era5, tmp_path, capsys):
    model = xensf.train_latent(
        era5[["t"]], 8, latent_dim=8, width=4, blocks=1, epochs=1, batch_size=20, progress=False
    )
    model.save(tmp_path / "t.xensf")
    assert main(["info", str(tmp_path / "t.xensf")]) == 0
    text = capsys.readouterr().out
    assert "t (isobaricInhPa 850 hPa) " in text and "t (isobaricInhPa 500 hPa) " in text
    one = xensf.train_latent(  # at one level: a scalar coordinate, not a dim
        era5[["t"]].sel(isobaricInhPa=500.0), 8, latent_dim=8, width=4, blocks=1, epochs=1,
        batch_size=20, progress=False,
    )  # fmt: skip
    one.save(tmp_path / "t500.xensf")
    assert main(["info", str(tmp_path / "t500.xensf")]) == 0
    assert "t (isobaricInhPa 500 hPa) " in capsys.readouterr().out


def test_info_on_something_else_says_what_is_wrong(tmp_path, capsys):
    assert main(["info", str(tmp_path)]) == 1
    assert "is not an xensf bundle" in capsys.readouterr().err
