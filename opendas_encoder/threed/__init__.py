"""Open-vocabulary 3D mask classification (OpenMask3D's mask-feature step, our implementation).

numpy + torch only (no open3d/hydra/MinkowskiEngine). Public API:

    Scene3D, PosedFrame, InstanceGroundTruth      scene data model
    project_points, visible_points, scale_intrinsic  pinhole projection + depth-tested visibility
    compute_view_stats, top_k_views               per-mask view scores and top-k views
    MaskFeatureConfig, plan_crops, compute_mask_features, compute_mask_features_loop
    SamRefiner                                    optional Segment Anything refinement
    encode_queries, classify_masks, OPENMASK3D_TEMPLATE
    (PLY files: opendas_encoder.data.ply.read_ply_vertices / write_ply)
"""

from .classify import OPENMASK3D_TEMPLATE, classify_masks, encode_queries
from .crops import SamRefiner, expand_box, mask_to_box, multi_level_boxes
from .features import (CropPlan, MaskFeatureConfig, aggregate_crop_features, compute_mask_features,
                       compute_mask_features_loop, encode_crops, plan_crops)
from .projection import DEFAULT_VIS_THRESHOLD, project_points, scale_intrinsic, visible_points
from .scene import InstanceGroundTruth, PosedFrame, Scene3D
from .views import ViewStats, compute_view_stats, top_k_views

__all__ = [
    "OPENMASK3D_TEMPLATE", "classify_masks", "encode_queries", "SamRefiner", "expand_box", "mask_to_box",
    "multi_level_boxes", "CropPlan", "MaskFeatureConfig", "aggregate_crop_features", "compute_mask_features",
    "compute_mask_features_loop", "encode_crops", "plan_crops",
    "DEFAULT_VIS_THRESHOLD", "project_points", "scale_intrinsic", "visible_points", "InstanceGroundTruth",
    "PosedFrame", "Scene3D", "ViewStats", "compute_view_stats", "top_k_views",
]
