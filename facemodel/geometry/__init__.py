"""Pure geometry: mesh IO, the template, Laplacian, UV map, geometry image, rendering."""

from .deformation_transfer import DeformationTransfer, deformation_gradients
from .geometry_image import GeometryImage, geometry_image_lookup
from .laplacian import cotangent_laplacian, cotangent_weights, scipy_to_torch_sparse
from .mesh_io import Mesh, load_mesh, load_obj, read_obj_vertices, save_mesh, save_obj
from .raster import rasterize
from .template import Template, check_vertices
from .uv import UVMap, boundary_loops, harmonic_uv, signed_areas_2d

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
