"""Evaluation metrics (paper §5.3)."""

from .metrics import diversity, mean_vertex_distance, specificity

__all__ = ["diversity", "mean_vertex_distance", "specificity"]
