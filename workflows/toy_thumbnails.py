"""Template thumbnails (workflows/<name>.jpg) from what a Toy World workflow really produced.

The host test (tests/test_host_toyworld.py) runs every toyworld_*.json in a real server and, with
SAE_CONCEPTS_TOY_PICTURES=1, hands the saved images here: each panel is one SaveImage output,
upscaled without smoothing, with its title and the settings under it.

The SD1.5 / SDXL / Flux workflows get theirs the same way: the host test runs each with the Toy World
in place of its model (toy_workflows.on_toy_world), and the caption above the panels says so.
Regenerate all ten: `SAE_CONCEPTS_TOY_PICTURES=1 pytest tests/test_host_toyworld.py`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

HERE = Path(__file__).parent
PANEL = 240          # px: a 48 px image at 5x
TEXT_H = 64


def thumbnail(panels: list[tuple[np.ndarray, str, str]], out: Path, caption: str = "", lines: int = 3) -> Path:
    """panels: (image [H, W, 3] uint8, title, settings) side by side -> JPEG at `out`; `caption`
    (wrapped) above them, up to `lines` lines of settings under each."""
    font = ImageFont.load_default(size=15)
    small = ImageFont.load_default(size=12)
    width = len(panels) * (PANEL + 12) + 12
    head = _wrap(caption, (width - 24) // 8)
    top = 12 + 20 * len(head)
    text_h = TEXT_H + 14 * max(0, lines - 3)
    sheet = Image.new("RGB", (width, top + PANEL + text_h + 12), (32, 32, 36))
    draw = ImageDraw.Draw(sheet)
    for j, line in enumerate(head):
        draw.text((12, 8 + 20 * j), line, fill=(255, 214, 120), font=font)
    for i, (img, title, settings) in enumerate(panels):
        x = 12 + i * (PANEL + 12)
        pic = Image.fromarray(np.asarray(img, dtype=np.uint8)).resize((PANEL, PANEL), Image.NEAREST)
        sheet.paste(pic, (x, top))
        draw.text((x, top + PANEL + 6), title, fill=(240, 240, 240), font=font)
        for j, line in enumerate(_wrap(settings, 38)[:lines]):
            draw.text((x, top + PANEL + 26 + 14 * j), line, fill=(190, 190, 190), font=small)
    sheet.save(out, quality=92)
    return out


def _wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return lines + ([line] if line else [])
