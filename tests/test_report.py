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


def test_a_card_is_as_wide_as_its_subtitle_and_an_empty_one_says_why():
    from sae_concepts.training.report.report import default_font
    subtitle = "middle_block.1  t=1  cond    label (held-out images where it matched)"
    one = np.asarray(card_image("concept 3: red circle (1)", subtitle, [(torch.full((8, 8, 3), 0.5), "a", "b")]))
    assert one.shape[1] >= default_font(11).getlength(subtitle) + 12
    assert (one[20:40, -6:] == 255).all()           # the subtitle ends inside the card, not cut at its edge
    empty = np.asarray(card_image("concept 4: red circle (1)", "s", []))
    blank = np.asarray(card_image("concept 4: red circle (1)", "s", [], empty=""))
    assert (empty[40:152] != blank[40:152]).any()   # the picture band carries the reason


def test_the_cards_note_says_what_labels_are_worth_on_this_run():
    from sae_concepts.training.report.report import example_word, labels_notes
    cards = [("k", {"kind": "concept", "labels": ["red circle"], "fires": True}),
             ("k", {"kind": "concept", "labels": ["red circle", "plain"], "fires": False}),
             ("k", {"kind": "concept", "labels": ["blue square"], "fires": True})]
    chance = _rows(composition_iou=[0.09], composition_iou_everywhere=[0.08])
    notes = labels_notes(chance, cards)
    assert "for 0 of 12 SAEs: no SAE's maps localise the objects" in notes[0]
    assert notes[1].startswith("Labelled concepts that fire on no evaluation image: 1 of the 3 cards shown")
    some = _rows(composition_iou=[0.09, 0.30], composition_iou_everywhere=[0.08])
    assert "for 6 of 12 SAEs; where they do not" in labels_notes(some, cards)[0]
    assert "localise" not in labels_notes([{"block": "b"}], cards)[0]   # not measured: not claimed
    assert labels_notes(chance, []) == []
    assert example_word(cards) == "red circle"


def test_the_page_carries_the_notes_the_silent_cards_and_the_picture_sizes():
    from sae_concepts.training.report.report import render_html
    sections = [("k", {"cid": 1, "kind": "concept", "labels": ["red circle"], "counts": {"red circle": 2},
                       "files": ["s0_c1.png"], "size": (381, 188), "fires": False})]
    page = render_html(_rows(composition_iou=[0.09], composition_iou_everywhere=[0.08]), [], [], sections, "", None, None)
    assert "no SAE&#x27;s maps localise the objects" in page and "fire on no evaluation image: 1 of the 1 cards" in page
    assert "red circle (2) <i>(does not fire on any evaluation image)</i>" in page
    assert "width='381' height='188'" in page and 'placeholder="e.g. red circle"' in page
