"""An ITDA atom's first label is the patch it came from, shown as an image: checked on the synthetic
world, where each token's planted concept and its cell's colour in the image are known."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from sae_concepts.sae_core import load_sae
from sae_concepts.training import cli
from sae_concepts.training.demo.demo import D, key_seed, write_split
from sae_concepts.training.demo.synthetic_scenes import COLOURS, LABELS, concept_directions
from sae_concepts.training.report.report import TILE, Provenance, build_report
from sae_concepts.training.storage.shards import ShardSet

KEY = ("middle_block.1", 0.5, "cond")
RED = torch.tensor([1.0, 0.1, 0.1])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("itda_world")
    write_split(root, "train", 12, 0, seed=1, with_pictures=True)
    write_split(root, "eval", 6, 200_000, seed=3, with_pictures=True)
    assert cli.main(["itda", "--quiet", "--shards", str(root / "train"), "--out", str(root / "itda.safetensors"),
                     "--only", "middle_block.1,t=0.5,|cond", "--threshold", "0.3"]) == 0
    return root


def prompts_of(shards: ShardSet) -> dict[int, str]:
    return {pid: p for sh in shards.shards for pid, p in zip(sh["prompt_ids"], sh["prompts"])}


def test_source_patch_shows_the_atoms_planted_concept(world):
    entry = load_sae(world / "itda.safetensors").entries[0]
    assert entry.info.training["shards"] == str((world / "train").resolve())
    source = ShardSet.open(world / "train")
    prov = Provenance.for_entry(entry, None)          # found from what the file records
    assert prov.source is not None and prov.why_not == ""
    label_dirs, _ = concept_directions(D, key_seed(*KEY))
    prompts = prompts_of(source)
    assert entry.sae.n_latents >= 12
    for atom in range(entry.sae.n_latents):
        src = entry.sae.provenance(atom)
        r, c = divmod(src["pos"], 16)
        label, tiles = prov.describe(entry, atom)
        assert label == f"from image {src['prompt']}, t=0.5, token ({r}, {c}) of 16x16: {prompts[src['prompt']]}"
        (full, cap1, _), (zoom, cap2, _) = tiles
        assert (cap1, cap2) == ("source image", "source patch") and full.shape == zoom.shape == (TILE, TILE, 3)
        # The atom's planted concept (its strongest planted direction) is the colour of the patch drawn.
        planted = LABELS[int((entry.sae.atoms[atom] @ label_dirs.T).argmax())]
        cy = (min(r, 1) + 0.5) / (min(r + 2, 16) - max(r - 1, 0))   # the cell's centre in the zoom, as a fraction
        cx = (min(c, 1) + 0.5) / (min(c + 2, 16) - max(c - 1, 0))
        centre = zoom[int(cy * TILE) - 2:int(cy * TILE) + 3, int(cx * TILE) - 2:int(cx * TILE) + 3].reshape(-1, 3)
        assert (centre.mean(0) - torch.tensor(COLOURS[planted])).abs().max() < 0.08, (atom, planted, r, c)
        # ...and the cell is outlined in red on the whole image.
        y0, x0 = int(r * 8 * TILE / 128), int(c * 8 * TILE / 128)
        torch.testing.assert_close(full[y0, x0], RED)


def test_without_the_image_the_token_is_shown_on_the_grid_and_without_the_collection_it_is_said(world, tmp_path):
    entry = load_sae(world / "itda.safetensors").entries[0]
    moved = tmp_path / "train"
    shutil.copytree(world / "train", moved, ignore=shutil.ignore_patterns("images"))
    prov = Provenance.for_entry(entry, moved)
    assert prov.why_not == ""                         # the same shards: same fingerprint
    for atom in range(3):
        r, c = divmod(entry.sae.provenance(atom)["pos"], 16)
        label, [(pic, caption, note)] = prov.describe(entry, atom)
        assert caption == "source token" and "not saved" in note and f"token ({r}, {c})" in label
        red = (pic == RED).all(-1).nonzero()
        assert red[:, 0].min() == r * TILE // 16 and red[:, 1].min() == c * TILE // 16
        assert red[:, 0].max() < (r + 1) * TILE // 16 + 1 and red[:, 1].max() < (c + 1) * TILE // 16 + 1
    gone = Provenance.for_entry(entry, tmp_path / "nowhere")
    assert gone.source is None and "--provenance-shards" in gone.why_not
    label, tiles = gone.describe(entry, 0)
    assert tiles == [] and label == f"from image {entry.sae.provenance(0)['prompt']}, t=0.5, " \
                                    f"token {entry.sae.provenance(0)['pos']}"
    # A collection that changed since the set was built is used, with a warning.
    manifest = next(moved.glob("manifest_r*.json"))
    m = json.loads(manifest.read_text())
    m["shards"] = m["shards"][:-1]
    manifest.write_text(json.dumps(m))
    assert "changed since the ITDA set was built" in Provenance.for_entry(entry, moved).why_not


def test_report_cards_open_with_the_source_patch(world, tmp_path):
    root = world
    assert cli.main(["dictionary", "--quiet", "--shards", str(root / "eval"), "--sae", str(root / "itda.safetensors"),
                     "--masks", str(root / "eval" / "masks"), "--out", str(tmp_path / "dict.json")]) == 0
    assert cli.main(["evaluate", "--shards", str(root / "eval"), "--sae", str(root / "itda.safetensors"),
                     "--out", str(tmp_path / "metrics.json")]) == 0
    page = build_report(tmp_path / "report", root / "itda.safetensors", tmp_path / "dict.json",
                        tmp_path / "metrics.json", root / "eval", max_cards=8)
    text = page.read_text()
    entry = load_sae(root / "itda.safetensors").entries[0]
    cards = text.count("<b>atom ")
    assert cards == min(8, entry.sae.n_latents) and text.count("from image ") >= cards
    assert "class=\"note\"" not in text.split("<h2>Concepts</h2>")[1]
    # Each card's picture starts with the two source tiles (red outline on the first).
    from PIL import Image
    import numpy as np
    pngs = sorted((tmp_path / "report").glob("s0_c*.png"))
    assert len(pngs) == cards
    for png in pngs:
        card = torch.from_numpy(np.array(Image.open(png).convert("RGB"))).float() / 255
        first_tile = card[40:40 + TILE, 6:6 + TILE]
        assert ((first_tile - RED).abs().max(-1).values < 0.01).sum() >= 8, png.name
    # Without the collection the report says so instead of drawing.
    page = build_report(tmp_path / "report2", root / "itda.safetensors", tmp_path / "dict.json",
                        tmp_path / "metrics.json", root / "eval", provenance_shards=tmp_path / "nowhere", max_cards=4)
    assert "--provenance-shards" in page.read_text()
