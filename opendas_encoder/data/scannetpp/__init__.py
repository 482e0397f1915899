"""ScanNet++ (layout reader, rendered instance masks) and the ScanNet++ Offices segment dataset
(paper Appendix E). One job per module:

* :mod:`.io`: COLMAP text model (quaternions via scipy) and the PLY mesh (plyfile);
* :mod:`.scene`: one scene on disk (:class:`ScanNetPPScene`: frames, mesh, per-vertex instances);
* :mod:`.render`: instance maps rendered from the mesh into the frames (open3d) and cached;
* :mod:`.dataset`: :class:`ScanNetPPOffices`, the Offices split and its vocabularies;
* ``python -m opendas_encoder.data.scannetpp``: the command line (:mod:`.__main__`).
"""

from .dataset import ScanNetPPOffices, offices_split, offices_vocabulary, split_scene_ids, vocabulary_report
from .io import (ColmapCamera, ColmapImage, Mesh, qvec_to_rotmat, read_colmap_cameras_text, read_colmap_images_text,
                 read_ply_mesh, rotmat_to_qvec)
from .render import render_scene_instance_maps
from .scene import (IGNORED_LABELS, MESH_FILE, ScanNetPPFrame, ScanNetPPScene, annotation_labels,
                    resolve_data_root)

__all__ = [
    "ScanNetPPOffices", "offices_split", "offices_vocabulary", "split_scene_ids", "vocabulary_report",
    "ColmapCamera", "ColmapImage", "Mesh", "qvec_to_rotmat", "read_colmap_cameras_text", "read_colmap_images_text",
    "read_ply_mesh", "rotmat_to_qvec", "render_scene_instance_maps", "IGNORED_LABELS", "MESH_FILE",
    "ScanNetPPFrame", "ScanNetPPScene", "annotation_labels", "resolve_data_root",
]
