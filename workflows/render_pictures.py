"""Draws a picture of each example workflow's graph (nodes, widget values, links) for the README.

Run `python workflows/render_pictures.py` after `build_workflows.py`; writes workflows/pictures/*.png.
"""
from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

HERE = Path(__file__).parent
OURS = {"LoadSAE", "SpatialConceptSteer", "GlobalStyleSteer", "ConceptMapPreview"}


def render(path: Path, out: Path, scale: float = 0.55) -> None:
    ui = json.loads(path.read_text())
    xs = [n["pos"][0] + n["size"][0] for n in ui["nodes"]]
    ys = [n["pos"][1] + n["size"][1] for n in ui["nodes"]]
    W, H = int((max(xs) + 40) * scale), int((max(ys) + 40) * scale)
    img = Image.new("RGB", (W, H), (32, 32, 36))
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    boxes = {}
    for n in ui["nodes"]:
        x, y = n["pos"][0] * scale + 10, n["pos"][1] * scale + 10
        w, h = n["size"][0] * scale, n["size"][1] * scale
        boxes[n["id"]] = (x, y, w, h)
        fill = (70, 52, 36) if n["type"] == "Note" else (40, 70, 90) if n["type"] in OURS else (55, 55, 60)
        d.rectangle([x, y, x + w, y + h], fill=fill, outline=(150, 150, 150))
        d.rectangle([x, y, x + w, y + 14], fill=(25, 25, 28))
        d.text((x + 4, y + 2), n.get("title") or n["type"], fill=(235, 235, 235), font=font)
        if n["type"] == "Note":
            text = n["widgets_values"][0]
            words, line, lines = text.replace("\n", " \n ").split(" "), "", []
            for word in words:
                if word == "\n" or len(line) + len(word) > int(w / 6):
                    lines.append(line)
                    line = "" if word == "\n" else word
                else:
                    line = f"{line} {word}".strip()
            lines.append(line)
            for i, l in enumerate(lines[: int((h - 18) / 11)]):
                d.text((x + 4, y + 18 + 11 * i), l, fill=(230, 220, 190), font=font)
        else:
            for i, v in enumerate(v for v in n["widgets_values"] if v not in ("fixed",)):
                if 18 + 11 * i > h - 10:
                    break
                d.text((x + 4, y + 18 + 11 * i), str(v)[: int(w / 6)], fill=(200, 200, 200), font=font)
    for _, src, _, dst, _, typ in ui["links"]:
        sx, sy, sw, sh = boxes[src]
        tx, ty, _, th = boxes[dst]
        colour = {"MODEL": (180, 150, 255), "SAE": (90, 200, 255), "MASK": (120, 220, 120), "IMAGE": (100, 180, 220),
                  "CONDITIONING": (255, 200, 100), "LATENT": (255, 150, 180)}.get(typ, (200, 200, 200))
        d.line([sx + sw, sy + sh / 2, tx, ty + th / 2], fill=colour, width=2)
    out.parent.mkdir(exist_ok=True)
    img.save(out)


if __name__ == "__main__":
    for p in sorted(HERE.glob("*.json")):
        render(p, HERE / "pictures" / f"{p.stem}.png")
        print("drew", p.stem)
