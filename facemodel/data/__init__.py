"""Data: the ICT-FaceKit source, the ICT 4D dataset builder, imports and the Dataset."""

from .builder import ICTDatasetConfig, ICTFaceGenerator, build_ict_dataset, plan_ict_dataset
from .dataset import FaceDataset
from .generic import import_scans
from .expressions import EXPRESSION_LABELS, ICT_BLENDSHAPES
from .ict import ICTSource
from .store import Manifest, read_manifest

__all__ = [
    "ICTDatasetConfig",
    "ICTFaceGenerator",
    "build_ict_dataset",
    "plan_ict_dataset",
    "FaceDataset",
    "import_scans",
    "EXPRESSION_LABELS",
    "ICT_BLENDSHAPES",
    "ICTSource",
    "Manifest",
    "read_manifest",
]
