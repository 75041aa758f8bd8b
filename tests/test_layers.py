"""The house keeps its floors: each package imports only the layers below it (as
docs/architecture.md draws them), nothing below the bridge imports xarray, and no two
packages import each other. Read from the source (every import, lazy ones included)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "xensf"

#: docs/architecture.md's table: the layer of each package or top-level module.
LAYERS = {
    "xensf.errors": 0,
    "xensf.checks": 0,
    "xensf.urls": 0,
    "xensf._version": 0,
    "xensf.data": 0,
    "xensf.filters": 1,
    "xensf.latent": 2,
    "xensf.obs": 2,
    "xensf.curvilinear": 2,
    "xensf.bridge": 3,
    "xensf.metrics": 3,
    "xensf.accessor": 4,
    "xensf.era5": 4,
    "xensf.models": 4,
    "xensf.cycling": 5,
    "xensf.plot": 5,
    "xensf.experiments": 6,
    "xensf.cli": 7,
    "xensf.__main__": 8,
    # deprecated aliases of moved modules, kept for one release
    "xensf.catalog": 8,
    "xensf.sample": 8,
    "xensf.simulate": 8,
    "xensf.forecast": 8,
    "xensf.twin": 8,
}
#: From this layer on, code may import the package top (``import xensf``), which
#: reaches every layer.
USES_THE_TOP = 6
BELOW_THE_BRIDGE = 2


def _unit(module: str) -> str:
    """The package or top-level module that ``module`` belongs to."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def _imports(path: Path) -> list[str]:
    """Every module ``path`` imports (absolute names), at any depth of its code."""
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(relative.parts)
    package = parts[:-1]  # the package a relative import starts from
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                found.append(".".join(base + ([node.module] if node.module else [])))
            else:
                found.append(node.module or "")
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "id", getattr(node.func, "attr", None)) == "import_module"
        ):
            found.append("<import_module>")
    return found


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        yield name.removesuffix(".__init__"), path


def test_every_module_has_a_layer():
    missing = {_unit(m) for m, _ in _modules() if m != "xensf"} - set(LAYERS)
    assert not missing, f"add {sorted(missing)} to LAYERS here and to docs/architecture.md"


@pytest.mark.parametrize("module,path", list(_modules()), ids=lambda v: str(v))
def test_imports_go_down_the_layers(module, path):
    if module == "xensf":  # the package top: names loaded on first use from every layer
        return
    unit = _unit(module)
    layer = LAYERS[unit]
    for target in _imports(path):
        if target == "<import_module>":
            assert unit == "xensf.models" or layer > BELOW_THE_BRIDGE, (
                f"{module} loads modules by import_module"
            )
            continue
        if layer <= BELOW_THE_BRIDGE:
            assert target.split(".")[0] != "xarray", f"{module} imports xarray"
        if not target.startswith("xensf"):
            continue
        other = _unit(target)
        if other == "xensf":
            assert layer >= USES_THE_TOP, f"{module} (layer {layer}) imports the package top"
            continue
        if other == unit:
            continue
        assert LAYERS[other] < layer, (
            f"{module} (layer {layer}) imports {target} (layer {LAYERS[other]})"
        )


def test_moved_modules_still_import_for_a_release_with_a_warning():
    import importlib
    import sys

    import xensf.era5
    import xensf.models

    for old, new, names in [
        ("xensf.sample", "xensf.era5.sample", ["open_era5_sample", "COPERNICUS_NOTICE"]),
        ("xensf.simulate", "xensf.models.simulate", ["shallow_water", "lorenz96"]),
    ]:
        sys.modules.pop(old, None)
        with pytest.warns(FutureWarning, match=new.replace(".", r"\.")):
            module = importlib.import_module(old)
        for name in names:
            assert getattr(module, name) is getattr(importlib.import_module(new), name)
    assert xensf.models.shallow_water is sys.modules["xensf.models.simulate"].shallow_water
    assert xensf.open_era5_sample is xensf.era5.open_era5_sample
