"""Report plots and cards: bounded metrics clamped, flat metrics not plotted, cards carry their labels."""
import numpy as np
import torch

from sae_concepts.training.report.report import card_image, metric_value, plot_metrics


def _rows(**per_key):
    rows = []
    for i, (block, t, cond) in enumerate((b, t, c) for b in ("input_blocks.8.1", "middle_block.1")
                                         for t in (1.0, 0.5, 0.0) for c in ("cond", "uncond")):
        rows.append({"block": block, "t": t, "cond": cond, **{k: v[i % len(v)] for k, v in per_key.items()}})
    return rows


def test_bounded_metrics_are_clamped_and_flat_ones_not_plotted(tmp_path):
    assert metric_value({"cohesion": 1.00000003}, "cohesion", (-1.0, 1.0)) == 1.0
    assert metric_value({"composition_iou": -1e-9}, "composition_iou", (0.0, 1.0)) == 0.0
    assert metric_value({"fvu": float("nan")}, "fvu", (0.0, None)) is None
    rows = _rows(l0=[1.0], cohesion=[1.00000001, 1.00000004, 0.99999999999], fvu=[0.2, 0.1, 0.05],
                 composition_iou=[0.61, 0.65])
    files, constant = plot_metrics(rows, tmp_path)
    assert files == ["plot_fvu.png", "plot_composition_iou.png"]
    assert constant == ["L0 = 1", "concept cohesion = 1"]
    assert all((tmp_path / f).stat().st_size > 10_000 for f in files)


def test_card_image_has_a_title_and_a_caption_under_every_picture():
    pics = [(torch.full((32, 32, 3), 0.5), f"top patch {i}", f"image {i}") for i in range(3)]
    with_text = np.asarray(card_image("concept 7: dog (3)", "middle_block.1  t=1  cond", pics))
    blank = np.asarray(card_image("", "", [(p, "", "") for p, _, _ in pics]))
    assert with_text.shape == blank.shape
    differs = (with_text != blank).any(2)
    assert differs[:40].any()                       # the title band
    tile_bottom = 40 + 112
    for i in range(3):                              # the caption under each picture
        x = 6 + i * (112 + 6)
        assert differs[tile_bottom:, x:x + 112].any(), i
