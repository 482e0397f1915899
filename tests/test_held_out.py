"""Issue 25 item 11: held-out test scenes (--held-out) for the demo and the suite."""

import json

from eval import run_suite
from opendas_encoder.cli import main


def test_held_out_test_scenes_are_disjoint_from_every_selection_scene(tmp_path):
    """Issue 25 item 11: the library default was selected on the quick suite's test scenes (seeds 1000 + s,
    scenes 0..29), a prefix of the full suite's, the demo's and the few-shot curves' test scenes. --held-out
    tests on other scene seeds, and so on other scenes (the generator keys a scene by seed, split, index)."""
    from eval import run_fewshot
    from opendas_encoder.demo import DemoOptions, demo_config
    from opendas_encoder.generated.world.domains import build_domain

    run = run_suite.resolve_method("opendas-default")

    def test_seed(config):
        return config.data.test.options["seed"]

    seeds = range(20)  # far more run seeds than any selection used (3)
    selection = set()
    for seed in seeds:
        for sizes in (run_suite.QUICK, run_suite.FULL):
            selection.add(test_seed(run_suite.suite_config("cast", run, seed, sizes, str(tmp_path), "cpu")))
        selection.add(test_seed(demo_config(DemoOptions(), seed)))
        selection.add(run_fewshot.domain_data("cast", seed, run_fewshot.QUICK).test.options["seed"])
    assert selection == {1000 + s for s in seeds}  # what the docs say the selection used
    held_out = {test_seed(run_suite.suite_config("cast", run, s, run_suite.FULL, str(tmp_path), "cpu", held_out=True))
                for s in seeds}
    assert held_out == {test_seed(demo_config(DemoOptions(held_out=True), s)) for s in seeds}
    assert len(held_out) == len(seeds) and not held_out & selection
    # and the scenes themselves differ: no held-out image equals a selection-time image
    shown = {build_domain("cast", 6, 1000 + s, "test").scenes[k].image.tobytes() for s in range(3) for k in range(6)}
    fresh = [sc.image.tobytes() for s in range(3) for sc in build_domain("cast", 6, min(held_out) + s, "test").scenes]
    assert len(shown) == 18 and not set(fresh) & shown


def test_demo_held_out_trains_as_before_and_tests_on_held_out_scenes(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "--held-out", "--seeds", "1", "--scene-scale", "0.05", "--epochs", "1,1", "--variants",
                 "opendas", "--out", str(out), "--json", str(tmp_path / "demo.json"), "--device", "cpu", "--quiet"])
    assert code == 0
    assert "HELD-OUT test scenes (seeds 1000000 + s)" in capsys.readouterr().out
    assert json.loads((tmp_path / "demo.json").read_text())["held_out"] is True
    config = json.loads((out / "opendas" / "seed0" / "config.json").read_text())
    assert config["data"]["test"]["options"]["seed"] == 1000000
    assert config["data"]["train"]["options"]["seed"] == 0  # training data unchanged
