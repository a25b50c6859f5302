"""The steering pictures of a paper run, made from what the steering stage saved, so they show the
tables' own images: the spatial-steering picture (the unsteered images, then the same seeds
steered at the largest beta in the early, middle and late window, one column per task: the object
asked for, and where), and one picture per steering condition (unsteered above steered, each
column headed by what was asked, each steered image marked with the detector's verdict)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .config import WINDOWS

CELL = 96       # px per 48 px image (2x, no smoothing)


def strip_images(path: Path) -> list[np.ndarray]:
    """The images of a steering strip (steering.save_strip: one row, 2 px borders, scale 2)."""
    from PIL import Image
    with Image.open(path) as im:
        a = np.asarray(im.convert("RGB"))
    size = a.shape[0] // 2 - 2            # the image side before scaling
    step = (size + 2) * 2
    return [a[:size * 2, i * step:i * step + size * 2] for i in range(a.shape[1] // step)]


def _cell(img: np.ndarray) -> np.ndarray:
    from PIL import Image
    img = (np.clip(img, 0, 1) * 255).round().astype(np.uint8) if img.dtype != np.uint8 else img
    return np.asarray(Image.fromarray(img).resize((CELL, CELL), Image.NEAREST))


def unsteered_images(steering: Path, kind: str, tasks: list[dict]) -> list[np.ndarray]:
    """The unsteered image of each task, in task order, at CELL px (they are stored per concept)."""
    from .steering import unsteered_path
    seen: dict[str, int] = {}
    out = []
    with np.load(unsteered_path(steering, kind, tasks)) as refs:
        for t in tasks:
            j = seen.get(t["concept"], 0)
            seen[t["concept"]] = j + 1
            out.append(_cell(refs[t["concept"].replace(" ", "_")][j]))
    return out


ASKED = {"spatial": "+ {concept}\n{quadrant}", "style": "-> {concept}", "suppress_object": "- {concept}",
         "suppress_style": "- {concept}"}


def condition_figure(out: Path, condition: dict, caption: str, columns: int = 8) -> Path | None:
    """out/report/<name>.png: one condition's first `columns` tasks, unsteered above steered, each
    column headed by what was asked and each steered image marked with the detector's verdict;
    None when the stage's files are not there."""
    from PIL import Image, ImageDraw
    from ...report.report import default_font
    steering = Path(out) / "steering"
    index, strip = steering / f"unsteered_{condition['kind']}.json", steering / f"{condition['name']}.png"
    if not index.exists() or not strip.exists():
        return None
    all_tasks = json.loads(index.read_text())["tasks"]
    tasks = all_tasks[:columns]
    verdict = {r["task"]: r["success"] for r in condition.get("images", [])}
    grid = [("unsteered", unsteered_images(steering, condition["kind"], all_tasks)[:columns]),
            ("steered", [_cell(i) for i in strip_images(strip)[:columns]])]
    font, small = default_font(13), default_font(11)
    left, top, pad, foot = 90, 58, 6, 16
    width = max(left + len(tasks) * (CELL + pad), 12 + round(font.getlength(caption)))
    sheet = Image.new("RGB", (width, top + len(grid) * (CELL + pad) + foot), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((6, 6), caption, fill="black", font=font)
    for c, t in enumerate(tasks):
        draw.text((left + c * (CELL + pad), 26), ASKED[condition["kind"]].format(**{"quadrant": "", **t}).strip(),
                  fill="black", font=small)
    for r, (label, imgs) in enumerate(grid):
        y = top + r * (CELL + pad)
        draw.text((6, y + CELL // 2 - 7), label, fill="black", font=font)
        for c, img in enumerate(imgs):
            sheet.paste(Image.fromarray(img), (left + c * (CELL + pad), y))
    y = top + len(grid) * (CELL + pad)
    for c in range(len(tasks)):
        ok = verdict.get(c)
        if ok is not None:
            draw.text((left + c * (CELL + pad), y), "success" if ok else "no", font=small,
                      fill=(20, 130, 40) if ok else (150, 150, 150))
    path = Path(out) / "report" / f"{condition['name']}.png"
    sheet.save(path)
    return path


def spatial_figure(out: Path, beta: float, rows: str = "both", columns: int = 6, title: str = "") -> Path | None:
    """out/spatial_steering.png, or None when the run has no spatial steering saved."""
    from PIL import Image, ImageDraw
    from ...report.report import default_font
    steering = Path(out) / "steering"
    index = steering / "unsteered_spatial.json"
    strips = {w: steering / f"spatial_{w}_b{beta:g}_{rows}.png" for w in WINDOWS}
    if not index.exists() or not all(p.exists() for p in strips.values()):
        return None
    all_tasks = json.loads(index.read_text())["tasks"]
    tasks = all_tasks[:columns]
    grid = [("unsteered", unsteered_images(steering, "spatial", all_tasks)[:columns])]
    for w, (a, b) in WINDOWS.items():
        grid.append((f"{w} {a:g}-{b:g}, beta {beta:g}", [_cell(i) for i in strip_images(strips[w])[:columns]]))
    font = default_font(13)
    left, top, pad = 190, 58, 6
    title = title or f"Spatial steering: put an object not in the prompt into a quadrant ({rows} CFG rows)"
    width = max(left + len(tasks) * (CELL + pad), 12 + round(font.getlength(title)))
    sheet = Image.new("RGB", (width, top + len(grid) * (CELL + pad)), "white")   # as wide as the title needs
    draw = ImageDraw.Draw(sheet)
    draw.text((6, 6), title, fill="black", font=font)
    for c, t in enumerate(tasks):
        draw.text((left + c * (CELL + pad), 26), f"+ {t['concept']}\n{t['quadrant']}", fill="black", font=font)
    for r, (label, imgs) in enumerate(grid):
        y = top + r * (CELL + pad)
        draw.text((6, y + CELL // 2 - 7), label, fill="black", font=font)
        for c, img in enumerate(imgs):
            sheet.paste(Image.fromarray(img), (left + c * (CELL + pad), y))
    path = Path(out) / "spatial_steering.png"
    sheet.save(path)
    return path
