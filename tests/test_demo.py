"""`opendas demo` end to end on a small generated world with the shipped CLIP (CI-sized)."""

import json

from opendas_encoder.cli import main


def test_demo_prints_the_labelled_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "--seeds", "1", "--scene-scale", "0.05", "--epochs", "1,1", "--out", str(out),
                 "--json", str(tmp_path / "demo.json"), "--device", "cpu", "--quiet"])
    assert code == 0
    text = capsys.readouterr().out
    assert "generated world" in text and "not a real dataset" in text
    assert "zero-shot CLIP" in text and "| opendas " in text and "| opendas-carry" in text
    result = json.loads((tmp_path / "demo.json").read_text())
    for key in ("zero_shot", "opendas", "opendas-carry"):
        assert set(result[key]) >= {"acc", "weighted_f1", "base_f1", "novel_f1"}
    assert result["seconds"] > 0 and result["world"] == "generated world"
    assert (out / "opendas" / "seed0" / "final" / "prompts.safetensors").exists()
    assert (out / "opendas" / "seed0" / "tsne_text_embeddings.png").exists()
