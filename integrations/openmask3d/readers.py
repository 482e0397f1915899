"""OpenMask3D's on-disk formats, read by the package (:mod:`opendas_encoder.threed.processed`).

Re-exported here so that the integration's code and its users keep one import path; the readers
live in the package because the own-scan workflow (``opendas scan``) reads the same layout.
"""

from opendas_encoder.threed.processed import (  # noqa: F401
    ProcessedLayout, count_frames, find_mask_proposals, find_openmask3d_features, numpy_array_globals,
    point_cloud_path, read_classes_json, read_mask_proposals, read_matrix, read_openmask3d_features,
    read_processed_scene, read_scannet_gt)
