"""The shipped workflows are what workflows/build_workflows.py writes, and no two nodes overlap
(title bars included) at the sizes it gives them. No ComfyUI needed; the browser test checks the
same in the real frontend, at the sizes the frontend draws."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

WORKFLOWS = Path(__file__).resolve().parent.parent / "workflows"


def load_builder(out_dir: Path):
    spec = importlib.util.spec_from_file_location("build_workflows", WORKFLOWS / "build_workflows.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.HERE = out_dir   # write into a temporary folder, not over the shipped files
    return mod


def overlapping(ui: dict, title_h: int) -> list[tuple]:
    """Pairs of node ids whose boxes (title bar above pos included) intersect."""
    b = [(n["id"], n["pos"][0], n["pos"][1] - title_h, n["size"][0], n["size"][1] + title_h) for n in ui["nodes"]]
    return [(i, j) for k, (i, ax, ay, aw, ah) in enumerate(b) for (j, bx, by, bw, bh) in b[k + 1:]
            if ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("workflows")
    mod = load_builder(out)
    for build in mod.WORKFLOWS:
        build()
    return mod, out


def test_shipped_workflows_are_the_builders_output(built):
    mod, out = built
    names = sorted(p.name for p in out.glob("*.json"))
    assert names == sorted(p.name for p in WORKFLOWS.glob("*.json"))
    for name in names:
        assert json.loads((out / name).read_text()) == json.loads((WORKFLOWS / name).read_text()), \
            f"{name} differs from build_workflows.py's output: run python workflows/build_workflows.py"


@pytest.mark.parametrize("name", sorted(p.name for p in WORKFLOWS.glob("*.json")))
def test_no_two_nodes_overlap(built, name):
    mod, _ = built
    ui = json.loads((WORKFLOWS / name).read_text())
    hits = overlapping(ui, mod.TITLE_H)
    assert not hits, f"{name}: overlapping node ids {hits}"
    for n in ui["nodes"]:
        if n["type"] != "Note":
            assert n["size"][0] >= mod.SIZES[n["type"]][0] and n["size"][1] >= mod.SIZES[n["type"]][1]


def test_layout_check_catches_an_overlap(built):
    mod, _ = built
    # The second node's title bar (y 120-150) reaches into the first node's body (y 30-130).
    ui = {"nodes": [{"id": 1, "pos": [0, 30], "size": [100, 100]}, {"id": 2, "pos": [50, 150], "size": [100, 100]}]}
    assert overlapping(ui, mod.TITLE_H) == [(1, 2)]
    ui["nodes"][1]["pos"] = [50, 170]   # below it, with the title bar clear
    assert overlapping(ui, mod.TITLE_H) == []


@pytest.mark.parametrize("name", sorted(p.stem for p in WORKFLOWS.glob("*.json")))
def test_every_workflow_has_a_thumbnail(name):
    """ComfyUI's template browser shows workflows/<name>.jpg beside each workflow: the Toy World ones
    and the SD1.5 / SDXL / Flux ones alike (rendered by tests/test_host_toyworld.py with
    SAE_CONCEPTS_TOY_PICTURES=1)."""
    from PIL import Image
    jpg = WORKFLOWS / f"{name}.jpg"
    assert jpg.is_file(), f"{name}.json has no thumbnail: run SAE_CONCEPTS_TOY_PICTURES=1 pytest tests/test_host_toyworld.py"
    with Image.open(jpg) as im:
        assert im.format == "JPEG" and im.width >= 240 and im.height >= 240
