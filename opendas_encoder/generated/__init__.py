"""Everything procedurally generated, kept apart from the real dataset loaders (``opendas_encoder.data``,
which never import this package). Results measured on any of it are labelled "generated".

* :mod:`.world`: the generated two-domain world (captioned source domain, shifted target domain of
  scenes with masks and a base/novel vocabulary) and its small CPU-pretrained CLIP (:mod:`.world.clip`);
* dataset fixtures written in the real on-disk layouts, read back by the real loaders:
  :mod:`.generic`, :mod:`.ade20k`, :mod:`.kitti360`, :mod:`.scannetpp`;
* :mod:`.scene3d`: a generated 3D office (posed RGB-D frames, mesh, instance ground truth) in
  OpenMask3D's processed layout and in ScanNet++'s layout.
"""
