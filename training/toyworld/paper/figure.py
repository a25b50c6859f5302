"""The spatial-steering picture of a paper run: the unsteered images, then the same seeds steered
at the largest beta in the early, middle and late window, one column per task (the object asked
for, and where). Made from what the steering stage saved, so it shows the table's own images."""
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


def spatial_figure(out: Path, beta: float, rows: str = "both", columns: int = 6, title: str = "") -> Path | None:
    """out/spatial_steering.png, or None when the run has no spatial steering saved."""
    from PIL import Image, ImageDraw
    from ...report.report import default_font
    from .steering import unsteered_path
    steering = Path(out) / "steering"
    index = steering / "unsteered_spatial.json"
    strips = {w: steering / f"spatial_{w}_b{beta:g}_{rows}.png" for w in WINDOWS}
    if not index.exists() or not all(p.exists() for p in strips.values()):
        return None
    all_tasks = json.loads(index.read_text())["tasks"]
    tasks = all_tasks[:columns]
    seen: dict[str, int] = {}
    unsteered = []
    with np.load(unsteered_path(steering, "spatial", all_tasks)) as refs:
        for t in tasks:                   # stored per concept, in task order
            j = seen.get(t["concept"], 0)
            seen[t["concept"]] = j + 1
            img = refs[t["concept"].replace(" ", "_")][j]
            img = (np.clip(img, 0, 1) * 255).round().astype(np.uint8) if img.dtype != np.uint8 else img
            unsteered.append(np.asarray(Image.fromarray(img).resize((CELL, CELL), Image.NEAREST)))
    grid = [("unsteered", unsteered)]
    for w, (a, b) in WINDOWS.items():
        imgs = strip_images(strips[w])[:columns]
        grid.append((f"{w} {a:g}-{b:g}, beta {beta:g}",
                     [np.asarray(Image.fromarray(i).resize((CELL, CELL), Image.NEAREST)) for i in imgs]))
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
