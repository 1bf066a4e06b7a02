"""Evaluation: pixel metrics, object-level matching and FROC, computed the way the field does."""
from mcgr.eval.metrics import PixelCounts, aggregate, pixel_counts, pixel_metrics
from mcgr.eval.objects import froc, match_clusters, match_objects, object_metrics

__all__ = ["PixelCounts", "aggregate", "pixel_counts", "pixel_metrics", "froc", "match_clusters", "match_objects",
           "object_metrics"]
