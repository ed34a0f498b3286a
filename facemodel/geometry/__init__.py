"""Pure geometry: mesh IO, the template, Laplacian, UV map, geometry image, rendering.

Submodules load on first use (``from facemodel.geometry import UVMap`` imports only
``facemodel.geometry.uv``), so mesh IO alone does not pull in SciPy.
"""

from __future__ import annotations

import importlib

#: public name -> the submodule that defines it
_WHERE = {
    "DeformationTransfer": "deformation_transfer",
    "deformation_gradients": "deformation_transfer",
    "GeometryImage": "geometry_image",
    "geometry_image_lookup": "geometry_image",
    "cotangent_laplacian": "laplacian",
    "cotangent_weights": "laplacian",
    "scipy_to_torch_sparse": "laplacian",
    "Mesh": "mesh_io",
    "load_mesh": "mesh_io",
    "load_obj": "mesh_io",
    "read_obj_vertices": "mesh_io",
    "save_mesh": "mesh_io",
    "save_obj": "mesh_io",
    "rasterize": "raster",
    "Template": "template",
    "check_vertices": "template",
    "UVMap": "uv",
    "boundary_loops": "uv",
    "harmonic_uv": "uv",
    "signed_areas_2d": "uv",
}

__all__ = [
    "DeformationTransfer",
    "deformation_gradients",
    "GeometryImage",
    "geometry_image_lookup",
    "cotangent_laplacian",
    "cotangent_weights",
    "scipy_to_torch_sparse",
    "Mesh",
    "load_mesh",
    "load_obj",
    "read_obj_vertices",
    "save_mesh",
    "save_obj",
    "rasterize",
    "Template",
    "check_vertices",
    "UVMap",
    "boundary_loops",
    "harmonic_uv",
    "signed_areas_2d",
]


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
