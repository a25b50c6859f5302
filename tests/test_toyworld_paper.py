"""The Toy World paper measurements: the pieces that decide a number, against naive references,
and the whole `toyworld paper` pipeline end to end on a small random toy model (host tier)."""
from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest
import torch

from sae_concepts.sae_core import SaeConfig, TopKSAE
from sae_concepts.sae_core.errors import ConfigError
from sae_concepts.sae_core.interventions import NORMALISATIONS, global_steer
from sae_concepts.training.toyworld.paper import (
    markdown_to_html, object_components, quadrant_masks, quadrant_of, ssim, tables_markdown)
from sae_concepts.host.toyworld.world import Scene, ToyObject, render


def test_global_steer_normalisations_match_a_naive_loop():
    g = torch.Generator().manual_seed(0)
    sae = TopKSAE(SaeConfig(d_in=16, n_latents=64, k=4))
    sae.reset_parameters(g)
    delta = torch.randn(9, 16, generator=g)
    f = sae.W_dec[[3, 7]] / sae.W_dec[[3, 7]].norm(dim=1, keepdim=True)
    with torch.no_grad():
        code = sae.encode(delta)
    norms = [float((code.values[p] * sae.input_scale).norm()) for p in range(9)]
    for norm in NORMALISATIONS:
        with torch.no_grad():
            got = global_steer(sae, delta, [3, 7], 5.0, norm)
        divisor = {"sum": sum(norms), "mean": sum(norms) / 9, "none": 1.0}[norm]
        for p in range(9):
            want = 5.0 * norms[p] / divisor * f.sum(0)
            assert torch.allclose(got[p], want, atol=1e-5), (norm, p)
    # "sum" is the paper as written: the weights over positions add up to beta.
    with torch.no_grad():
        s = global_steer(sae, delta, [3], 5.0, "sum")
        assert abs(float((s @ f[0]).sum()) - 5.0) < 1e-4
    with pytest.raises(ConfigError, match="normalisation"):
        global_steer(sae, delta, [3], 5.0, "max")


def test_detector_masks_of_a_rendered_scene_are_the_renderer_masks():
    scene = Scene((ToyObject("red", "circle", 16, 4, 6), ToyObject("blue", "square", 14, 28, 26)), "striped")
    r = render(scene)
    comps = dict(object_components(r.image)[0])
    assert sorted(comps) == ["blue square", "red circle"]
    for i, label in enumerate(r.labels):
        inter = (comps[label] & r.masks[i]).sum()
        union = (comps[label] | r.masks[i]).sum()
        assert inter / union > 0.98, label


def test_quadrants():
    assert quadrant_of((3, 40), 48) == "top right"
    assert quadrant_of((30, 10), 48) == "bottom left"
    m = quadrant_masks(["top right", "bottom left"], 48)
    assert m[0, :24, 24:].all() and m[0].sum() == 24 * 24
    assert m[1, 24:, :24].all() and m[1].sum() == 24 * 24


def test_ssim_is_one_for_equal_images_and_drops_with_change():
    a = render(Scene((ToyObject("red", "circle", 16, 4, 6),), "dotted")).image
    assert ssim(a, a) == pytest.approx(1.0)
    b = render(Scene((ToyObject("red", "circle", 16, 24, 26),), "checkered")).image
    assert ssim(a, b) < 0.9


def test_tables_put_the_paper_beside_ours_and_say_when_nothing_was_steered():
    rows = [{"block": "middle_block.1", "t": 1.0, "cond": "cond", "composition_iou": 0.31, "objects": 12,
             "composition_iou_label": 0.42, "composition_iou_everywhere": 0.08, "predicted_fraction": 0.5,
             "cohesion": 0.8, "inter_concept_similarity": 0.2, "fvu": 0.1}]
    steering = {"unsteered_success": {"spatial": 0.0, "style": 0.25, "suppress_object": 0.0, "suppress_style": 0.0},
                "missing_labels": {"spatial": False, "style": True, "suppress_object": False, "suppress_style": True},
                "conditions": [{"kind": "spatial", "window": [0.0, 0.4], "beta": 32.0, "rows": "both", "n": 8,
                                "success": 0.5, "colour_in_quadrant": 0.75, "rmse": 0.1, "ssim": 0.7,
                                "normalisation": None}]}
    md = tables_markdown(rows, steering, {"weights": "w", "step": "5", "images": "n", "steps": 25, "cfg": 3.0})
    assert "| middle_block.1 | 1 | cond | 0.31 | 0.42 | 0.08 | 0.50 | 12 |" in md and "0.26" in md
    assert "| early | 32 | both | 50 % (8) | 75 % |" in md and "80 %" in md
    assert "no concept of the steered blocks is labelled" in md
    html = markdown_to_html(md)
    assert html.count("<table>") == 4 and "<td>50 % (8)</td>" in html
    # the reading, computed from the rows: 0.31 is more than 0.05 above the whole-image map's 0.08
    assert "1 of 1 concept maps beat a map of the whole image" in md and "the maps localise the objects" in md
    assert "at best 50 % of images (early window, both rows, beta 32; unsteered 0 %; paper: 80 % in that window" in md
    assert html.count("<li>") == 2 and "<ul>" in html


def test_the_reading_picks_the_best_row_and_the_paper_figure_of_its_window():
    row = {"block": "middle_block.1", "t": 1.0, "cond": "cond", "composition_iou_everywhere": 0.08}
    rows = [{**row, "composition_iou": 0.10}, {**row, "t": 0.0, "composition_iou": 0.40}]
    md = tables_markdown(rows, None, {"weights": "w"})
    assert "1 of 2 concept maps beat" in md and "best 0.40, middle_block.1, t = 0, cond" in md
    assert "in some (block, t) only" in md and "ours there 0.10" in md
    assert "do not localise" in tables_markdown([{**row, "composition_iou": 0.12}], None, {"weights": "w"})
    cond = {"kind": "spatial", "beta": 8.0, "rows": "both", "n": 4, "colour_in_quadrant": 0.0, "rmse": 0.1,
            "ssim": 0.9, "normalisation": None, "blocks": {"cond": ["middle_block.1"]}}
    steering = {"unsteered_success": {"spatial": 0.0, "suppress_object": 0.5},
                "conditions": [{**cond, "window": [0.0, 0.4], "success": 0.25},
                               {**cond, "window": [0.8, 1.0], "success": 0.75},
                               {**cond, "window": [0.4, 0.8], "success": None},
                               {**cond, "kind": "suppress_object", "window": [0.0, 1.0], "beta": -8.0, "success": 1.0,
                                "kept": 0.0, "normalisation": "mean"}]}
    sens = [{"block": b, "resolution": g, "edit": "delta", "ratio": 4.0, "n": 4, "rmse": e, "same_reading": 1.0}
            for b, g, e in (("input_blocks.1.1", "24x24", 0.5), ("middle_block.1", "3x3", 0.01))]
    md = tables_markdown(rows, steering, {"weights": "w"}, sensitivity=sens)
    assert "at best 75 % of images (late window, both rows, beta 8; unsteered 0 %; paper: 25 % in that window, up to 80 % in its best)" in md
    early_best = {**steering, "conditions": [{**cond, "window": [0.0, 0.4], "success": 0.5}]}
    assert "paper: 80 % in that window)." in tables_markdown(rows, early_best, {"weights": "w"})   # no "up to" itself
    all_failed = {**steering, "conditions": [{**cond, "window": w, "success": 0.0} for w in ([0.0, 0.4], [0.8, 1.0])]}
    assert ("Spatial steering (b): the asked object in the asked quadrant in none of the images of any of the 2 "
            "conditions (unsteered 0 %; paper: up to 80 %).") in tables_markdown(rows, all_failed, {"weights": "w"})
    none_gone = {**steering, "conditions": [{**steering["conditions"][3], "beta": b, "success": 0.0} for b in (-8.0, -64.0)]}
    assert ("Suppression (d): the prompted object gone in none of the images of any of the 2 conditions (unsteered "
            "50 %).") in tables_markdown(rows, none_gone, {"weights": "w"})
    assert "Measured on" not in md and "Measured on 2 CPU cores" in tables_markdown(rows, None, {"weights": "w", "machine": "2 CPU cores"})
    assert "| 100 % (4) | +50 points | 0 % |" in md
    assert "gone in at best 100 % of images against 50 % unsteered (+50 points; beta -8, mean normalisation), the other prompted object kept in 0 %" in md
    assert "move it by at most 0.010 (middle_block.1), under 10 % of the most sensitive block's 0.500" in md
    sens[1]["rmse"] = 0.4                                   # a block the image depends on: no such claim
    md = tables_markdown(rows, steering, {"weights": "w"}, sensitivity=sens + [{**sens[0], "edit": "stream", "ratio": 8.0}])
    assert "after a random edit of 4 x Delta" in md and "move it by at most 0.400 (middle_block.1)." in md


def test_block_sensitivity_edit_has_the_asked_size_and_is_repeatable():
    from sae_concepts.training.toyworld.paper.sensitivity import random_edit
    delta = torch.randn(2, 8, 3, 3, generator=torch.Generator().manual_seed(1))
    seen: dict = {}
    a = random_edit(4.0, 0, seen, "b")(delta, None)
    assert torch.allclose(a.norm(dim=1), 4.0 * delta.norm(dim=1), rtol=1e-5)
    assert seen == {"b": "3x3"}
    assert torch.equal(a, random_edit(4.0, 0, {}, "b")(delta, None))        # same seed, same directions
    assert not torch.allclose(a, random_edit(4.0, 1, {}, "b")(delta, None))
    cos = torch.nn.functional.cosine_similarity(a[0, :, 0, 0], a[0, :, 1, 1], dim=0)
    assert abs(cos) < 0.99                                                  # a direction per position


def test_paper_pipeline_end_to_end_on_a_small_toy_model(comfy, tmp_path):
    """collect -> masks -> train -> dictionary -> evaluate -> steering -> tables + report: on the shipped
    model it must run through; on a random toy model (no shipped weights yet) it may only stop at
    the detector finding no object or an empty dictionary, each said in one line."""
    from test_host_toyworld import toy_weights
    from sae_concepts.training.toyworld.paper import ToyPaperConfig, ToyPaperError, run_paper
    from sae_concepts.host.toyworld.sampling import SHIPPED_WEIGHTS
    weights = toy_weights(tmp_path / "w")
    cfg = ToyPaperConfig(out=str(tmp_path / "paper"), weights=str(weights), train_images=8, heldout_images=4,
                         eval_images=4, steps=4, epochs=2, steer_images=2, spatial_betas="8",
                         style_betas="mean:8", dictionary_iou=0.01)
    try:
        summary = run_paper(cfg, progress=False)
    except (ConfigError, ToyPaperError) as e:
        if weights == SHIPPED_WEIGHTS:
            raise
        assert "dictionary would be empty" in str(e) or "found no object" in str(e)
        pytest.skip(f"no shipped toy weights; a random toy model stops early, as it should: {e}")
    md = (tmp_path / "paper" / "paper_tables.md").read_text()
    for head in ("(a) Composition", "(b) Spatial", "(c) Global style", "(d) Negative", "(e) How much the image"):
        assert head in md
    assert [(r["block"], r["ratio"]) for r in summary["sensitivity"]][:2] == [("input_blocks.1.1", 1.0),
                                                                             ("input_blocks.1.1", 4.0)]
    assert len(summary["composition"]) == 18   # 3 blocks x 3 t x cond/uncond
    from PIL import Image
    with Image.open(tmp_path / "paper" / "spatial_steering.png") as fig:   # 2 tasks x (unsteered + 3 windows)
        assert fig.size[1] == 58 + 4 * (96 + 6) and fig.size[0] >= 190 + 2 * (96 + 6)
        title = np.asarray(fig.convert("L"))[:24]                                    # the title's rows
        inked = np.nonzero((title < 128).any(axis=0))[0]
        assert len(inked) and inked.max() < fig.size[0] - 3                          # the title ends inside the picture
    page = (tmp_path / "paper" / "report" / "index.html").read_text()
    assert "The paper on the Toy World" in page and "What the tables say" in md and summary["reading"]
    shown = set(re.findall(r"<img src='([^']+)' alt='[^']+'", page))
    strips = {p.name for p in (tmp_path / "paper" / "report").glob("*.png") if p.name.startswith(("spatial", "style_", "suppress_"))}
    assert strips and strips <= shown                                                      # every strip, captioned
    again = run_paper(cfg, progress=False)      # resumes: nothing is redone, same numbers
    assert json.dumps(again["composition"]) == json.dumps(summary["composition"])
    sens = tmp_path / "paper" / "sensitivity.json"   # a folder from before table (e) had its stream rows
    rows = json.loads(sens.read_text())
    sens.write_text(json.dumps([{k: v for k, v in r.items() if k != "edit"} for r in rows if r["edit"] == "delta"]))
    explicit = dataclasses.replace(cfg, collect_blocks="output_blocks.3.1, mid_block.attentions.0,input_blocks.8.1")
    assert run_paper(explicit, progress=False)["sensitivity"] == rows   # the same blocks as ""; missing rows measured
    one = run_paper(dataclasses.replace(cfg, blocks="input_blocks.8.1"), progress=False)   # other blocks: steered again
    assert {b for c in one["steering"] for bs in c["blocks"].values() for b in bs} == {"input_blocks.8.1"}
    more = run_paper(dataclasses.replace(cfg, steer_images=3), progress=False)   # other tasks: steered again
    before = {c["name"]: c["n"] for c in summary["steering"]}
    assert all(c["n"] == 3 for c in more["steering"] if before[c["name"]] == 2) and 3 in {c["n"] for c in more["steering"]}
    import shutil
    elsewhere = shutil.copy(weights, tmp_path / "same_weights_elsewhere.safetensors")   # same content: resumes
    assert json.dumps(run_paper(dataclasses.replace(cfg, weights=str(elsewhere)), progress=False)["composition"]) == \
        json.dumps(summary["composition"])
    moved = dataclasses.replace(cfg, collect_blocks="input_blocks.5.1")   # its Delta would not match the SAEs
    with pytest.raises(ToyPaperError, match=r"paper_config\.json.*collect_blocks=''.*'input_blocks\.5\.1'"):
        run_paper(moved, progress=False)


def test_paper_run_at_other_blocks_collects_labels_and_steers_those(comfy, tmp_path):
    """--collect-blocks: the SAEs, the composition rows and the steered blocks are the asked ones."""
    from test_host_toyworld import toy_weights
    from sae_concepts.host.toyworld.sampling import SHIPPED_WEIGHTS
    from sae_concepts.sae_core import load_sae
    from sae_concepts.training.toyworld.paper import ToyPaperConfig, run_paper
    weights = toy_weights(tmp_path / "w")
    if weights != SHIPPED_WEIGHTS:
        pytest.skip("needs the shipped toy weights (a random model labels nothing)")
    blocks = ["input_blocks.5.1", "output_blocks.6.1"]
    cfg = ToyPaperConfig(out=str(tmp_path / "paper"), weights=str(weights), train_images=8, heldout_images=4,
                         eval_images=4, steps=4, epochs=2, steer_images=1, spatial_betas="4", style_betas="mean:4",
                         suppress_betas="-4", dictionary_iou=0.01, collect_blocks=",".join(blocks))
    summary = run_paper(cfg, progress=False)
    assert sorted({e.info.block for e in load_sae(tmp_path / "paper" / "sae_set.safetensors")}) == blocks
    assert sorted({r["block"] for r in summary["composition"]}) == blocks and len(summary["composition"]) == 12
    steered = {b for c in summary["steering"] for bs in c["blocks"].values() for b in bs}
    assert steered and steered <= set(blocks)


def test_the_cli_prints_the_reading_once_and_each_condition_gets_a_labelled_picture(tmp_path):
    from PIL import Image
    from sae_concepts.training.toyworld.paper.figure import CELL, condition_figure
    from sae_concepts.training.toyworld.paper.steering import save_strip, unsteered_path
    from sae_concepts.training.toyworld.paper.tables import READING_HEADING, without_reading
    md = f"head\n\n{READING_HEADING}\n\n- a verdict\n\n### (a) table\n| x |\n"
    assert without_reading(md) == "head\n\n### (a) table\n| x |\n"
    steering = tmp_path / "steering"
    steering.mkdir()
    (tmp_path / "report").mkdir()
    tasks = [{"prompt": "p0", "concept": "striped"}, {"prompt": "p1", "concept": "dotted"},
             {"prompt": "p2", "concept": "striped"}]
    (steering / "unsteered_style.json").write_text(json.dumps({"tasks": tasks}))
    grey = {v: np.full((48, 48, 3), v, np.float32) for v in (0.2, 0.4, 0.6)}
    np.savez(unsteered_path(steering, "style", tasks), striped=np.stack([grey[0.2], grey[0.6]]), dotted=grey[0.4][None])
    save_strip([np.full((48, 48, 3), v, np.float32) for v in (0.7, 0.8, 0.9)], steering / "style_x.png")
    cond = {"name": "style_x", "kind": "style", "images": [{"task": 0, "success": True}, {"task": 1, "success": False},
                                                          {"task": 2, "success": False}]}
    path = condition_figure(tmp_path, cond, "Style steering, late window")
    sheet = np.asarray(Image.open(path).convert("RGB")).astype(float) / 255
    left, top, pad = 90, 58, 6
    for c, v in enumerate((0.2, 0.4, 0.6)):          # the unsteered row in task order, though stored per concept
        x = left + c * (CELL + pad)
        assert abs(sheet[top + 40, x + 40, 0] - v) < 0.01, c
        assert abs(sheet[top + CELL + pad + 40, x + 40, 0] - (0.7, 0.8, 0.9)[c]) < 0.01, c   # steered, task order
    verdicts = sheet[top + 2 * (CELL + pad):, left:left + 60]
    green = (verdicts[..., 1] > verdicts[..., 0] + 0.2) & (verdicts[..., 1] > verdicts[..., 2] + 0.2)
    assert green.any()                                # "success" in green under the first column only
    assert not ((sheet[top + 2 * (CELL + pad):, left + CELL + pad:, 1] > sheet[top + 2 * (CELL + pad):, left + CELL + pad:, 0] + 0.2)).any()
    assert condition_figure(tmp_path, {**cond, "name": "missing"}, "c") is None
