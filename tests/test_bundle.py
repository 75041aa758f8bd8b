"""Model bundles: round trip, refusal of pickles, tampering, truncation, versions, atomicity."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from xensf.errors import BundleError, XensfError
from xensf.latent import bundle as bundle_module
from xensf.latent.bundle import (
    BUNDLE_FORMAT,
    BUNDLE_VERSION,
    bundle_info,
    load_bundle,
    save_bundle,
)


class _WritesMarker:
    """Unpickling this creates the file ``marker``: proof that a pickle was executed."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def tensors() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {
        "encoder.conv.weight": torch.randn(4, 2, 3, 3, generator=gen),
        "encoder.conv.bias": torch.randn(4, generator=gen, dtype=torch.float64),
        "decoder.half": torch.randn(5, 7, generator=gen).to(torch.float16),
        "decoder.bf16": torch.randn(3, generator=gen).to(torch.bfloat16),
        "steps": torch.tensor(12345678901, dtype=torch.int64),
        "index": torch.arange(-6, 6, dtype=torch.int32).reshape(3, 4),
        "bytes": torch.arange(0, 256, dtype=torch.uint8),
        "mask": torch.tensor([[True, False], [False, True]]),
        "empty": torch.zeros(0, 3),
        "transposed": torch.randn(3, 5, generator=gen).T,  # not contiguous
    }


@pytest.fixture
def metadata() -> dict:
    return {
        "config": {"latent_dim": 16, "depth": 3, "periodic_lon": True, "activation": "silu"},
        "variables": ["eta", "u", "v"],
        "units": {"eta": "m", "u": "m s-1", "v": "m s-1"},
        "norm": {"mean": [0.5, -1.25e-3, 2.0], "std": [1.0, 0.1, 1e-12]},
        "grid": {"x": [0.0, 1.0, 2.0], "sha256": "ab" * 32},
        "obs_error": None,
        "note": "Grüße, ε = 0.1",
    }


@pytest.fixture
def saved(tmp_path, tensors, metadata) -> Path:
    return save_bundle(tmp_path / "model.xensf", tensors, metadata)


def _assert_bit_identical(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.dtype == b.dtype
    assert a.shape == b.shape
    assert a.is_contiguous()
    # compare raw bytes: equal bits, including NaN payloads and signed zeros
    assert a.reshape(-1).view(torch.uint8).tolist() == b.reshape(-1).view(torch.uint8).tolist()


def _edit_document(path: Path, change) -> None:
    file = path / "bundle.json"
    document = json.loads(file.read_text())
    change(document)
    file.write_text(json.dumps(document))


# --- round trip --------------------------------------------------------------------------


def test_round_trip_is_bit_identical(saved, tensors, metadata):
    loaded, meta = load_bundle(saved)
    assert set(loaded) == set(tensors)
    for name, tensor in tensors.items():
        _assert_bit_identical(loaded[name], tensor)
    assert meta == metadata


def test_special_float_bits_survive(tmp_path):
    values = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0, 5e-324])
    path = save_bundle(tmp_path / "b.xensf", {"x": values}, {})
    loaded, _ = load_bundle(path)
    _assert_bit_identical(loaded["x"], values)


def test_layout_on_disk_is_readable_without_xensf(saved, tensors, metadata):
    from safetensors.torch import load_file

    assert sorted(p.name for p in saved.iterdir()) == ["bundle.json", "weights.safetensors"]
    document = json.loads((saved / "bundle.json").read_text(encoding="utf-8"))
    assert document["format"] == BUNDLE_FORMAT
    assert document["format_version"] == BUNDLE_VERSION == 1
    assert isinstance(document["xensf_version"], str) and document["xensf_version"]
    assert document["metadata"] == metadata
    assert document["tensors"]["decoder.half"] == {"dtype": "float16", "shape": [5, 7]}
    plain = load_file(saved / "weights.safetensors")
    torch.testing.assert_close(plain["encoder.conv.weight"], tensors["encoder.conv.weight"])


def test_bundle_info_reads_metadata_only(saved, metadata):
    (saved / "weights.safetensors").write_bytes(b"not read by bundle_info")
    info = bundle_info(saved)
    assert info["metadata"] == metadata
    assert info["tensors"]["steps"] == {"dtype": "int64", "shape": []}
    assert info["created"].endswith("+00:00")


def test_numpy_metadata_is_converted(tmp_path):
    meta = {
        "mean": np.array([[1.5, 2.5]], dtype=np.float32),
        "count": np.int64(7),
        "flag": np.bool_(True),
        "scale": np.float64(0.25),
        "levels": (500, 850),
    }
    path = save_bundle(tmp_path / "b.xensf", {}, meta)
    _, loaded = load_bundle(path)
    assert loaded == {
        "mean": [[1.5, 2.5]],
        "count": 7,
        "flag": True,
        "scale": 0.25,
        "levels": [500, 850],
    }
    assert type(loaded["count"]) is int and type(loaded["flag"]) is bool


@pytest.mark.parametrize(
    ("bad", "where"),
    [
        ({"a": {"b": object()}}, "metadata['a']['b']"),
        ({"a": [1, {2, 3}]}, "metadata['a'][1]"),
        ({"stats": {"sigma": float("nan")}}, "metadata['stats']['sigma']"),
        ({"t": torch.ones(2)}, "metadata['t']"),
        ({"when": np.datetime64("2020-01-01T00:00:00.000000000")}, "metadata['when']"),
        ({"a": {1: "x"}}, "metadata['a']"),
        ({"z": np.complex64(1 + 2j)}, "metadata['z']"),
    ],
)
def test_unserialisable_metadata_names_the_key(tmp_path, bad, where):
    with pytest.raises(BundleError) as info:
        save_bundle(tmp_path / "b.xensf", {"w": torch.ones(1)}, bad)
    assert where in str(info.value)
    assert not (tmp_path / "b.xensf").exists()
    assert list(tmp_path.iterdir()) == []


def test_complex_tensor_is_refused(tmp_path):
    with pytest.raises(BundleError, match=r"tensors\['z'\]"):
        save_bundle(tmp_path / "b.xensf", {"z": torch.ones(2, dtype=torch.complex64)}, {})


def test_shared_memory_and_grad_tensors_are_saved(tmp_path):
    base = torch.randn(4, 3, requires_grad=True)
    tied = {"enc.weight": base, "dec.weight": base, "row": base[1]}
    loaded, _ = load_bundle(save_bundle(tmp_path / "b.xensf", tied, {}))
    for name, tensor in tied.items():
        _assert_bit_identical(loaded[name], tensor.detach())
        assert not loaded[name].requires_grad


def test_device_mapping(saved, tensors):
    loaded, _ = load_bundle(saved, device="cpu")
    assert all(t.device == torch.device("cpu") for t in loaded.values())
    loaded, _ = load_bundle(saved, device=torch.device("cpu"))
    _assert_bit_identical(loaded["index"], tensors["index"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_device_mapping_cuda(saved, tensors):
    loaded, _ = load_bundle(saved, device="cuda")
    assert all(t.device.type == "cuda" for t in loaded.values())
    _assert_bit_identical(loaded["encoder.conv.weight"].cpu(), tensors["encoder.conv.weight"])
    path = save_bundle(saved.parent / "from-gpu.xensf", loaded, {})
    again, _ = load_bundle(path)
    _assert_bit_identical(again["decoder.bf16"], tensors["decoder.bf16"])


def test_bad_device_is_an_option_error(saved):
    with pytest.raises(ValueError, match="device"):
        load_bundle(saved, device="not-a-device")


# --- pickles are never executed ----------------------------------------------------------


def _malicious_pickle(marker: Path) -> bytes:
    return pickle.dumps({"w": _WritesMarker(marker)}, protocol=4)  # unsafe-on-purpose


def test_pickle_renamed_to_weights_is_refused_unexecuted(saved, tmp_path):
    marker = tmp_path / "pwned"
    payload = _malicious_pickle(marker)
    (saved / "weights.safetensors").write_bytes(payload)
    with pytest.raises(BundleError, match="pickle") as info:
        load_bundle(saved)
    assert "weights.safetensors" in str(info.value)
    assert not marker.exists()


def test_torch_save_file_renamed_to_weights_is_refused_unexecuted(saved, tmp_path):
    marker = tmp_path / "pwned"
    weights = saved / "weights.safetensors"
    torch.save({"w": _WritesMarker(marker)}, weights)  # unsafe-on-purpose
    with pytest.raises(BundleError, match=r"torch\.save"):
        load_bundle(saved)
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".pt", ".pkl", ".xensf"])
def test_pickle_file_offered_as_bundle_is_refused_unexecuted(tmp_path, suffix):
    marker = tmp_path / "pwned"
    offered = tmp_path / f"model{suffix}"
    offered.write_bytes(_malicious_pickle(marker))
    for reader in (load_bundle, bundle_info):
        with pytest.raises(BundleError, match="pickle") as info:
            reader(offered)
        assert str(offered) in str(info.value)
    assert not marker.exists()


def test_torch_save_file_offered_as_bundle_is_refused_unexecuted(tmp_path):
    marker = tmp_path / "pwned"
    offered = tmp_path / "model.pt"
    torch.save({"w": _WritesMarker(marker)}, offered)  # unsafe-on-purpose
    with pytest.raises(BundleError, match=r"torch\.save"):
        load_bundle(offered)
    assert not marker.exists()


def test_bare_safetensors_file_is_named(saved, tmp_path):
    bare = tmp_path / "bare.safetensors"
    bare.write_bytes((saved / "weights.safetensors").read_bytes())
    with pytest.raises(BundleError, match="bare safetensors"):
        load_bundle(bare)


def test_a_path_from_home_and_the_json_inside_a_bundle(tmp_path, saved, tensors, monkeypatch):
    """``~`` is the user's home, as xarray and pandas read it (not a folder named
    ``~``); the bundle.json of a bundle given for the bundle names the bundle."""
    monkeypatch.setenv("HOME", str(tmp_path))
    save_bundle("~/home.xensf", tensors, {"latent_dim": 8})
    assert (tmp_path / "home.xensf").is_dir() and not Path("~").exists()
    assert bundle_info("~/home.xensf")["metadata"] == {"latent_dim": 8}
    assert torch.equal(load_bundle("~/home.xensf")[0]["index"], tensors["index"])
    with pytest.raises(BundleError, match=rf"give the bundle.*: {saved}$"):
        load_bundle(saved / "bundle.json")


def test_missing_bundle_and_missing_parts(tmp_path, saved):
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "nowhere.xensf")
    (saved / "weights.safetensors").unlink()
    with pytest.raises(BundleError, match="incomplete"):
        load_bundle(saved)
    (saved / "bundle.json").unlink()
    with pytest.raises(BundleError, match=r"no bundle\.json"):
        bundle_info(saved)


def test_a_url_is_refused_with_how_to_copy_it_here(tensors, metadata):
    # once "No bundle at https:/example.org/m.xensf: it does not exist", the URL mangled
    url = "https://example.org/models/m.xensf"
    for call in (lambda: load_bundle(url), lambda: bundle_info(url),
                 lambda: save_bundle(url, tensors, metadata)):  # fmt: skip
        with pytest.raises(BundleError, match=r"https://example\.org/models/m\.xensf is a URL.*"
                           r"fsspec\.filesystem\('https'\)"):  # fmt: skip
            call()


# --- tampering and corruption ------------------------------------------------------------


def test_modified_weights_are_a_hash_mismatch(saved):
    weights = saved / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # one bit of the last tensor: still a valid safetensors file
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="hash mismatch") as info:
        load_bundle(saved)
    assert "weights.safetensors" in str(info.value)


def test_weights_of_another_bundle_are_a_hash_mismatch(tmp_path, saved, tensors, metadata):
    other = dict(tensors, **{"encoder.conv.bias": tensors["encoder.conv.bias"] + 1})
    second = save_bundle(tmp_path / "other.xensf", other, metadata)
    (saved / "weights.safetensors").write_bytes((second / "weights.safetensors").read_bytes())
    with pytest.raises(BundleError, match=r"weights\.safetensors: hash mismatch"):
        load_bundle(saved)


def test_edited_metadata_is_refused(saved):
    _edit_document(saved, lambda d: d["metadata"]["config"].update(latent_dim=32))
    for reader in (load_bundle, bundle_info):
        with pytest.raises(BundleError, match="metadata hash mismatch"):
            reader(saved)


def test_edited_tensor_listing_is_refused(saved):
    _edit_document(saved, lambda d: d["tensors"]["mask"].update(shape=[4]))
    with pytest.raises(BundleError, match="mask"):
        load_bundle(saved)


@pytest.mark.parametrize("keep", [0.5, 0.01, 0.0])
def test_truncated_weights_are_refused(saved, keep):
    weights = saved / "weights.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(BundleError, match="truncated") as info:
        load_bundle(saved)
    assert "weights.safetensors" in str(info.value)


def test_trailing_garbage_is_corrupt(saved):
    weights = saved / "weights.safetensors"
    weights.write_bytes(weights.read_bytes() + b"\0" * 16)
    with pytest.raises(BundleError, match="corrupt"):
        load_bundle(saved)


def test_garbled_json_is_corrupt(saved):
    (saved / "bundle.json").write_text('{"format": "xensf-latent-bundle", ')
    with pytest.raises(BundleError, match="corrupt"):
        bundle_info(saved)


# --- versions ----------------------------------------------------------------------------


def test_newer_format_version_asks_to_upgrade(saved):
    _edit_document(saved, lambda d: d.update(format_version=BUNDLE_VERSION + 1))
    for reader in (load_bundle, bundle_info):
        with pytest.raises(BundleError, match="newer xensf") as info:
            reader(saved)
        assert "Upgrade" in str(info.value)


@pytest.mark.parametrize("value", [0, "1", 1.0, None, True])
def test_invalid_format_version(saved, value):
    _edit_document(saved, lambda d: d.update(format_version=value))
    with pytest.raises(BundleError, match="format_version"):
        bundle_info(saved)


def test_unknown_format_name(saved):
    _edit_document(saved, lambda d: d.update(format="someone-elses-format"))
    with pytest.raises(BundleError, match="someone-elses-format"):
        load_bundle(saved)


def test_unknown_keys_are_ignored(saved, metadata):
    _edit_document(saved, lambda d: d.update(added_later={"x": 1}))
    assert load_bundle(saved)[1] == metadata


def test_errors_are_xensf_value_errors():
    assert issubclass(BundleError, XensfError)
    assert issubclass(BundleError, ValueError)


# --- atomic save -------------------------------------------------------------------------


def test_save_replaces_an_existing_bundle(saved, tensors):
    save_bundle(saved, {"only": torch.ones(2)}, {"version": "second"})
    loaded, meta = load_bundle(saved)
    assert list(loaded) == ["only"] and meta == {"version": "second"}
    assert sorted(p.name for p in saved.parent.iterdir()) == ["model.xensf"]


def test_crash_during_save_leaves_the_old_bundle(saved, tensors, metadata, monkeypatch):
    def crash(file):
        raise KeyboardInterrupt("simulated crash after the weights were written")

    monkeypatch.setattr(bundle_module, "_sha256_file", crash)
    with pytest.raises(KeyboardInterrupt):
        save_bundle(saved, {"new": torch.zeros(3)}, {"new": True})
    monkeypatch.undo()
    loaded, meta = load_bundle(saved)
    assert meta == metadata
    _assert_bit_identical(loaded["index"], tensors["index"])
    assert sorted(p.name for p in saved.parent.iterdir()) == ["model.xensf"]


def test_crash_during_first_save_leaves_nothing(tmp_path, monkeypatch):
    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(bundle_module, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        save_bundle(tmp_path / "b.xensf", {"w": torch.ones(1)}, {})
    assert list(tmp_path.iterdir()) == []


def test_failed_rename_restores_the_old_bundle(saved, metadata, monkeypatch):
    real_rename = os.rename
    calls = []

    def rename(src, dst):
        calls.append((Path(src).name, Path(dst).name))
        if len(calls) == 2:  # the move of the new bundle into place
            raise OSError("simulated failure")
        real_rename(src, dst)

    monkeypatch.setattr(bundle_module.os, "rename", rename)
    with pytest.raises(OSError, match="simulated"):
        save_bundle(saved, {"new": torch.zeros(3)}, {})
    monkeypatch.undo()
    assert load_bundle(saved)[1] == metadata
    assert sorted(p.name for p in saved.parent.iterdir()) == ["model.xensf"]


@pytest.mark.parametrize("kind", ["file", "directory", "foreign-json"])
def test_refuses_to_overwrite_what_is_not_a_bundle(tmp_path, kind):
    path = tmp_path / "precious"
    if kind == "file":
        path.write_text("keep me")
    else:
        path.mkdir()
        content = '{"format": "other"}' if kind == "foreign-json" else "keep me"
        (path / ("bundle.json" if kind == "foreign-json" else "notes.txt")).write_text(content)
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    with pytest.raises(BundleError, match="overwrite=True"):
        save_bundle(path, {"w": torch.ones(1)}, {})
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before

    save_bundle(path, {"w": torch.ones(1)}, {"replaced": True}, overwrite=True)
    assert load_bundle(path)[1] == {"replaced": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious"]


def test_a_model_saves_over_what_is_not_a_bundle_only_when_told(tmp_path, tiny_model):
    # the refusal told LatentModel.save to pass overwrite=True, which it did not take
    path = tmp_path / "precious"
    path.write_text("keep me")
    with pytest.raises(BundleError, match="overwrite=True"):
        tiny_model.save(path)
    assert path.read_text() == "keep me"
    tiny_model.save(path, overwrite=True)
    assert load_bundle(path)[1] == tiny_model.metadata()


def test_paths_and_flags_of_another_type_are_refused(tmp_path, tiny_model):
    import xensf

    for path in (5, None, tiny_model):  # raw TypeErrors from pathlib
        with pytest.raises(BundleError, match="path must be text or a path"):
            xensf.load(path)
        with pytest.raises(BundleError, match="path must be text or a path"):
            save_bundle(path, {}, {})
    for flag in ("overwrite", "private"):  # "no" is true to Python
        with pytest.raises(BundleError, match=f"{flag} must be True or False, got 'no'"):
            save_bundle(tmp_path / "b.xensf", {}, {}, **{flag: "no"})
    assert not list(tmp_path.iterdir())


def test_missing_parent_directory(tmp_path):
    with pytest.raises(BundleError, match="does not exist"):
        save_bundle(tmp_path / "no" / "such" / "b.xensf", {}, {})
    # a file where the directory should be was said not to exist
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(BundleError, match="a-file is a file, not a directory"):
        save_bundle(tmp_path / "a-file" / "b.xensf", {}, {})


# -- latent-model bundles edited by hand (metadata hash made to match) ------------------
@pytest.fixture(scope="module")
def tiny_model():
    import warnings

    from xensf.latent import gridded_stride_obs, train_latent_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return train_latent_model(
            torch.rand(24, 1, 8, 8, generator=torch.Generator().manual_seed(0)),
            gridded_stride_obs(2),
            latent_dim=4,
            width=4,
            blocks=1,
            epochs=1,
            progress=False,
        )


def _rehashed(path, change):
    import hashlib

    from xensf.latent.bundle import _canonical_json

    file = path / "bundle.json"
    document = json.loads(file.read_text())
    change(document["metadata"])
    document["metadata_sha256"] = hashlib.sha256(_canonical_json(document["metadata"])).hexdigest()
    file.write_text(json.dumps(document))


def _set(path: str, value):
    def change(metadata):
        *parents, last = path.split("/")
        target = metadata
        for key in parents:
            target = target[key]
        if value is _DROP:
            del target[last]
        else:
            target[last] = value

    return change


_DROP = object()


@pytest.mark.parametrize(
    "change, field",
    [
        (_set("config", _DROP), "'config'"),
        (_set("normalization", _DROP), "'normalization'"),
        (_set("dtype", "load"), "'dtype'"),
        (_set("latent_obs_std", [-1.0, 1.0, 1.0, 1.0]), "'latent_obs_std'"),
        (_set("normalization/std", [0.0]), "normalization\\['std'\\]"),
        (_set("config/architecture/width", 10**6), "do not fit"),
        (_set("config/architecture/patch", "4"), "'patch'"),
        (_set("config/latent/obs_error/noise", [0.2, 0.1, 0.0, 0.3, 0.4]), "obs_error"),
        (_set("config/latent/obs_error/noise", [0.0, 0.1]), "obs_error"),
        (_set("config/latent/obs_error/std", "big"), "obs_error"),
        (_set("config/latent/coverage_error/coverage", [0, 0.5, 0.25, 0.75, 0.9, 1]), "coverage"),
        (
            _set("config/latent/coverage_error/coverage", [0, 0.1, 0.25, 0.5, 0.75, 0.9]),
            "coverage",
        ),
        (_set("config/latent/coverage_error/obs_relative_rmse", [1.0]), "obs_relative_rmse"),
        (_set("config/latent/coverage_error", [1.0]), "coverage_error"),
    ],
)
def test_an_edited_latent_model_bundle_is_refused_at_load(tiny_model, tmp_path, change, field):
    import xensf
    from xensf.bridge.model_cache import model_handle

    path = tmp_path / "edited.xensf"
    tiny_model.save(path)
    _rehashed(path, change)
    for load in (xensf.load, model_handle):
        with pytest.raises(BundleError, match=f"edited.xensf.*{field}") as info:
            load(path)
        assert "re-save" in str(info.value) or "corrupt" in str(info.value)


@pytest.mark.parametrize("text", ['{"format": ' + "9" * 5000 + "}", "[" * 200_000 + "]" * 200_000])
def test_a_pathological_bundle_json_is_refused(tmp_path, text):
    path = save_bundle(tmp_path / "b.xensf", {"w": torch.ones(2)}, {})
    (path / "bundle.json").write_text(text)
    with pytest.raises(BundleError, match="corrupt"):
        bundle_info(path)
