# Source me (bash): unpack the pinned upstream archives outside the work tree, build Detectron2 for CPU
# once, install what OVSeg's and OpenMask3D's code imports, and export OVSEG_ROOT / OPENMASK3D_ROOT.
#
#   source .ci/upstream.sh && setup_upstream            # used by .ci/run; works for a developer too
#
# Archives: <parent of the repo>/shared/upstream/{ov-seg,detectron2,openmask3d}.tar.gz (unmodified
# sources at the pinned commits, see that folder's README). Nothing is copied into the repository:
# they are unpacked under $OPENDAS_UPSTREAM_CACHE (default ~/.cache/opendas_encoder/upstream), one
# folder per archive checksum. Detectron2 is built once into a wheel, kept in that cache per
# (archive checksum, Python, torch), and installed from it; an interpreter that already has that very
# wheel installed is left as it is.

_upstream_log() { echo "[upstream] $*" >&2; }

setup_upstream() {
  local repo archives cache py torch_version
  repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  archives="${OPENDAS_UPSTREAM_ARCHIVES:-$(dirname "$repo")/shared/upstream}"
  cache="${OPENDAS_UPSTREAM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/opendas_encoder/upstream}"
  py="${PYTHON:-python}"
  for name in ov-seg detectron2 openmask3d; do
    if [ ! -f "$archives/$name.tar.gz" ]; then
      echo "ERROR: $archives/$name.tar.gz not found: the integration tests need the upstream archives" \
           "(expected next to the repository in ../shared/upstream; set OPENDAS_UPSTREAM_ARCHIVES)" >&2
      return 1
    fi
  done
  mkdir -p "$cache"

  # 1. unpack each archive once, into a folder named after its checksum
  local name sum dir
  declare -A roots
  for name in ov-seg detectron2 openmask3d; do
    sum="$(sha256sum "$archives/$name.tar.gz" | cut -c1-12)"
    dir="$cache/$name-$sum"
    if [ ! -f "$dir/.unpacked" ]; then
      _upstream_log "unpacking $name.tar.gz -> $dir"
      rm -rf "$dir" && mkdir -p "$dir"
      tar -xzf "$archives/$name.tar.gz" -C "$dir"
      touch "$dir/.unpacked"
    fi
    roots[$name]="$dir/$name"
  done

  # 2. Detectron2: a CPU wheel per (archive, Python, torch), built once (6-9 min on 2 cores)
  "$py" -m pip install -q wheel  # --no-build-isolation needs it
  torch_version="$("$py" -c 'import torch; print(torch.__version__)')"
  local pyver wheel_dir wheel
  pyver="$("$py" -c 'import sys; print("cp%d%d" % sys.version_info[:2])')"
  wheel_dir="$(dirname "${roots[detectron2]}")/wheel-$pyver-torch$torch_version"
  wheel="$(ls "$wheel_dir"/detectron2-*.whl 2>/dev/null | head -n1 || true)"
  if [ -z "$wheel" ]; then
    _upstream_log "building Detectron2 for CPU (5-9 min on 2 cores) -> $wheel_dir"
    rm -rf "$wheel_dir" "$wheel_dir.partial"
    (cd "${roots[detectron2]}" && FORCE_CUDA=0 MAX_JOBS=2 "$py" -m pip wheel -q --no-build-isolation --no-deps \
       -w "$wheel_dir.partial" . ) || { echo "ERROR: Detectron2 build failed" >&2; return 1; }
    mv "$wheel_dir.partial" "$wheel_dir"
    wheel="$(ls "$wheel_dir"/detectron2-*.whl | head -n1)"
  fi
  if "$py" - "$wheel" <<'EOF'
import importlib.metadata as md, json, os, sys, urllib.parse
try:
    url = json.loads(md.distribution("detectron2").read_text("direct_url.json") or "{}").get("url", "")
except (md.PackageNotFoundError, ValueError):
    sys.exit(1)
path = urllib.parse.unquote(urllib.parse.urlparse(url).path)
sys.exit(0 if path and os.path.realpath(path) == os.path.realpath(sys.argv[1]) else 1)
EOF
  then
    _upstream_log "Detectron2 from $wheel is installed already"
  else
    _upstream_log "installing $wheel"
    "$py" -m pip install -q --force-reinstall --no-deps "$wheel"
    "$py" -m pip install -q "$wheel"  # Detectron2's own requirements (fvcore, iopath, pycocotools, ...)
  fi

  # 3. what OVSeg (the project's `ovseg` extra) and OpenMask3D's feature step (the `openmask3d` extra) import
  "$py" -m pip install -q opencv-python-headless pycocotools pandas wandb \
    open3d plyfile hydra-core omegaconf imageio

  export OVSEG_ROOT="${roots[ov-seg]}"
  export OPENMASK3D_ROOT="${roots[openmask3d]}"
  _upstream_log "OVSEG_ROOT=$OVSEG_ROOT OPENMASK3D_ROOT=$OPENMASK3D_ROOT"
}
