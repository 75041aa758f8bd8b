"""How xensf recognises the dimensions of a forecast ensemble: one table, no code.

Each role maps to the CF attributes that identify its coordinate and, failing those,
the dimension names in common use. :mod:`xensf.bridge.dims` applies the table.
"""

from __future__ import annotations

#: CF attribute values that identify a role's coordinate variable (any match counts).
CF_CRITERIA: dict[str, dict[str, tuple[str, ...]]] = {
    "member": {
        "standard_name": ("realization",),
        "axis": ("E",),
    },
    "latitude": {
        "standard_name": ("latitude", "grid_latitude", "projection_y_coordinate"),
        "units": ("degrees_north", "degree_north", "degree_N", "degrees_N", "degreeN"),
        "axis": ("Y",),
    },
    "longitude": {
        "standard_name": ("longitude", "grid_longitude", "projection_x_coordinate"),
        "units": ("degrees_east", "degree_east", "degree_E", "degrees_E", "degreeE"),
        "axis": ("X",),
    },
    "time": {
        "standard_name": ("time",),
        "axis": ("T",),
    },
}

#: Dimension names tried, case-insensitively, when no coordinate carries CF attributes.
COMMON_NAMES: dict[str, tuple[str, ...]] = {
    "member": (
        "member",
        "number",
        "realization",
        "ensemble",
        "ens",
        "mem",
        "ensemble_member",
        "member_id",
    ),
    "latitude": ("lat", "latitude", "y", "nav_lat", "rlat"),
    "longitude": ("lon", "longitude", "x", "nav_lon", "rlon"),
    "time": ("time", "valid_time", "t"),
}

#: Dimension names of point observations (one entry per observation location).
POINT_DIM_NAMES: tuple[str, ...] = (
    "obs",
    "observation",
    "station",
    "stations",
    "site",
    "location",
    "point",
    "index",
    "nobs",
)

#: Roles whose dimension must exist in a forecast ensemble.
REQUIRED_ROLES: tuple[str, ...] = ("member", "latitude", "longitude")

#: Dimension names (lower case) taken for vertical levels when no coordinate says so
#: with CF metadata (``axis: Z``, ``positive``, a pressure or height standard_name):
#: training stacks such dims into channels, not into samples.
LEVEL_NAMES: tuple[str, ...] = (
    "level",
    "lev",
    "levels",
    "plev",
    "isobaricinhpa",
    "pressure_level",
    "pressure",
    "height",
    "depth",
    "altitude",
    "model_level",
    "hybrid",
    "sigma",
    "zlev",
    "z",
)
