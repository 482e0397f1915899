"""The backbone table of the README and docs/backbones.md is what eval/backbones.py measures today.

eval/backbones.py builds each example open_clip config on the meta device and asks the engine whether it can
drive it; the table rows must be its output line for line, so a tower family that stops (or starts) being
served, or a parameter count that changes with the default prompts, fails here until the docs say so.
"""

import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _table_rows(path):
    with open(path) as f:
        lines = [line.rstrip("\n") for line in f]
    return [line for line in lines if line.startswith("| ") and line.count("|") == 6 and "| model |" not in line
            and any(f"| {word} |" in line for word in ("yes", "no"))]


def test_readme_and_docs_backbone_tables_equal_eval_backbones(tmp_path):
    spec = importlib.util.spec_from_file_location("eval_backbones", os.path.join(ROOT, "eval", "backbones.py"))
    backbones = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(backbones)
    out = tmp_path / "backbones.md"
    assert backbones.main(["--out", str(out)]) == 0
    measured = _table_rows(out)
    assert len(measured) >= 20
    by_model = {line.split(" | ")[1]: line for line in measured}
    # the paper's figure: ViT-L-14, 8 x 24 visual + 4 x 12 text prompt tokens
    assert by_model["ViT-L-14"].split(" | ")[3] == "233,472"
    assert by_model["RN50"].split(" | ")[2] == "no"
    for doc in ("README.md", os.path.join("docs", "backbones.md")):
        assert _table_rows(os.path.join(ROOT, doc)) == measured, f"{doc}: rerun python eval/backbones.py"
