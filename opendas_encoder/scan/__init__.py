"""Your own scan: import phone RGB-D captures (nerfstudio, Record3D, ScanNet++ iPhone) into OpenMask3D's
processed layout, class-agnostic proposals, cached mask features, free-text queries and a web viewer.

Heavy dependencies (open3d, lzfse, viser, matplotlib) are imported inside the functions that need them.
"""
