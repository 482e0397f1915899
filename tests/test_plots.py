"""Plots a person reads (issue 25.17a/b): the loss plot explains the stage-2 climb, the confusion title is whole."""

import numpy as np
import pytest
import torch

import opendas_encoder as oe
from conftest import make_square_segments
from opendas_encoder.plots import loss_terms, plot_confusion, plot_loss_curves
from opendas_encoder.train import ScheduleConfig, TrainConfig, fit, prepare_segments, read_log
from opendas_encoder.train.config import RuntimeConfig

BASE = ["red square", "green square", "blue square"]


@pytest.fixture
def figures(monkeypatch):
    """The figures the plot functions close, kept open to be measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kept, close = [], plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: kept.append(fig))
    yield kept
    for fig in kept:
        close(fig)


def test_loss_plot_draws_the_weighted_terms_that_add_up_to_the_logged_loss_and_lambda(tmp_path, figures):
    """The stage-2 total climbs with the triplet weight's ramp (0 -> 5), which read as divergence: the plot now
    draws CE, lambda x triplet and the consistency term (they sum to the loss the trainer logged and stepped
    on) and lambda on a second axis."""
    torch.manual_seed(0)
    model = oe.create_model("opendas-tiny-vit", prompts=oe.PromptConfig.paper())
    train = prepare_segments(make_square_segments(seed=0), model.preprocess, BASE, model.image_size, progress=False)
    cfg = TrainConfig(schedule=ScheduleConfig(batch_size=4, stage1_epochs=2, stage2_epochs=2, lr=0.01, warmup_epochs=0),
                      consistency={"text": 10.0}, runtime=RuntimeConfig(device="cpu"), output_dir=str(tmp_path))
    fit(model, train, BASE + ["orange square"], cfg, str(tmp_path / "run"), progress=False)
    log = read_log(str(tmp_path / "run"))
    terms = loss_terms(log)
    # the truth: the trainer's own logged total (float32 sums of three terms: a few ulps of ~10)
    np.testing.assert_allclose(terms["ce"] + terms["weighted triplet"] + terms["consistency"], terms["total"],
                               rtol=1e-5, atol=1e-5)
    text = np.array([r["stage"] == "text" for r in log])
    assert terms["lambda"][text][0] == 0.0 and terms["lambda"][text][-1] == 5.0 and terms["consistency"].all()
    plot_loss_curves(log, str(tmp_path / "loss.png"), "run")
    fig = figures[-1]
    labels = {line.get_label(): line for ax in fig.axes for line in ax.get_lines()}
    assert {"cross-entropy", "λ × triplet", "consistency (weighted)", "total (sum of the terms)"} <= set(labels)
    lam_line = labels["λ (triplet weight, right)"]
    assert lam_line.axes is not labels["cross-entropy"].axes  # its own (right) axis
    np.testing.assert_array_equal(lam_line.get_ydata(), [r["lambda"] for r in log])


@pytest.mark.parametrize("n_classes", [3, 12])
def test_confusion_title_is_whole_and_clear_of_the_colour_bar(tmp_path, figures, n_classes):
    """The title was cut by the colour bar (and the figure's edge): measured on the drawn figure, every line of
    the title lies inside the figure and clear of the colour bar with its tick labels."""
    from matplotlib.text import Text

    title = ("generated-world: opendas-paper seed 0 (data: generated-world) - zero_shot "
             "(rows: ground truth; novel in red)")
    labels = [f"class number {i}" for i in range(n_classes)]
    rng = np.random.default_rng(0)
    truth = list(rng.choice(labels, 200))
    plot_confusion(truth, truth[::-1], labels, str(tmp_path / "c.png"), title, novel=labels[-1:])
    fig = figures[-1]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    texts = [t for t in fig.findobj(Text) if t.get_text() and " ".join(t.get_text().split()) == title]
    assert len(texts) == 1
    box = texts[0].get_window_extent(renderer)
    figure_box = fig.bbox
    assert box.x0 >= figure_box.x0 and box.x1 <= figure_box.x1 and box.y1 <= figure_box.y1
    colour_bar = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(colour_bar) == 1
    assert not box.overlaps(colour_bar[0].get_tightbbox(renderer))
