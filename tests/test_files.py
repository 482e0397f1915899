"""opendas_encoder.files: the one atomic folder writer the scan importer, query outputs and viewer export use."""

import os
import stat

import pytest

from opendas_encoder.files import atomic_folder


def test_an_error_inside_the_block_leaves_the_old_folder_and_no_temporary(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_folder(str(out), prefix=".tmp-x-") as tmp:
            with open(os.path.join(tmp, "new.txt"), "w") as f:
                f.write("half")
            raise KeyboardInterrupt
    assert sorted(os.listdir(tmp_path)) == ["out"] and os.listdir(out) == ["old.txt"]


def test_a_finished_block_replaces_the_folder_or_a_file_and_is_shared(tmp_path):
    old_mask = os.umask(0o027)
    try:
        for previous in ("folder", "file", None):
            out = tmp_path / f"out-{previous}"
            if previous == "folder":
                out.mkdir()
                (out / "old.txt").write_text("old")
            elif previous == "file":
                out.write_text("a file in the way")
            with atomic_folder(str(out)) as tmp:
                (open(os.path.join(tmp, "new.txt"), "w")).close()
            assert os.listdir(out) == ["new.txt"]
            assert stat.S_IMODE(os.stat(out).st_mode) == 0o750  # 0777 less the umask, not mkdtemp's 0700
    finally:
        os.umask(old_mask)
    assert sorted(os.listdir(tmp_path)) == ["out-None", "out-file", "out-folder"]


def test_a_parent_the_call_made_is_removed_again_on_failure(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_folder(str(tmp_path / "a" / "b" / "out")):
            raise RuntimeError("stop")
    assert not (tmp_path / "a" / "b").exists()
