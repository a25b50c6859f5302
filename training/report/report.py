"""`sae-concepts report`: a static HTML report: metrics in the paper's shape, plots, and one
card per labelled concept (labels, top-activating image patches, activation map), searchable
by word."""
from __future__ import annotations

import html
import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ...sae_core import load_sae
from ...sae_core.atomic import check_writable, write_text_atomic
from ...sae_core.concept_dictionary import ConceptDictionary
from ...sae_core.errors import SAEFileError
from ...sae_core.foreign_formats import read_json
from ..dictionary.dictionary import image_codes
from ..storage.shards import ShardSet

# (key, title, bounds): a bounded quantity is clamped into its bounds before it is shown, so
# float rounding (a cosine of 1.00000003) does not show up as a trend.
METRICS = [("fvu", "FVU (lower is better)", (0.0, None)),
           ("l0", "L0 (active latents per vector)", (0.0, None)),
           ("dead_fraction", "dead fraction (lower is better)", (0.0, 1.0)),
           ("labelled_concepts", "labelled concepts (dictionary)", (0.0, None)),
           ("cohesion", "concept cohesion (higher is better)", (-1.0, 1.0)),
           ("inter_concept_similarity", "inter-concept similarity (lower is better)", (-1.0, 1.0)),
           ("composition_iou", "composition IoU from concept maps (higher is better)", (0.0, 1.0))]
MIN_SPAN = 0.05   # y range shown at least this wide (in the quantity's units): no magnified noise


def metric_value(row: dict, key: str, bounds) -> float | None:
    """row[key] clamped into its bounds and rounded to 6 digits; None when absent or NaN."""
    v = row.get(key)
    if not isinstance(v, (int, float)) or isinstance(v, bool) or math.isnan(v):
        return None
    lo, hi = bounds
    v = max(v, lo) if lo is not None else v
    v = min(v, hi) if hi is not None else v
    return round(float(v), 6)


def plot_metrics(rows: list[dict], out: Path) -> tuple[list[str], list[str]]:
    """(plot files, notes for metrics not plotted because every SAE has the same value: a flat
    line says nothing, e.g. L0 of a TopK SAE is k everywhere)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    files, constant = [], []
    blocks = sorted({r["block"] for r in rows})
    colours = {b: plt.get_cmap("tab10")(i % 10) for i, b in enumerate(blocks)}
    for key, title, bounds in METRICS:
        values = [v for r in rows if (v := metric_value(r, key, bounds)) is not None]
        if not values:
            continue
        if len(rows) > 1 and max(values) - min(values) < 1e-6:
            constant.append(f"{title.split(' (')[0]} = {values[0]:g}")
            continue
        fig, ax = plt.subplots(figsize=(6.4, 3.4), dpi=110)
        for (block, cond) in sorted({(r["block"], r["cond"]) for r in rows}):
            pts = sorted((r["t"], v) for r in rows if r["block"] == block and r["cond"] == cond
                         and r["t"] is not None and (v := metric_value(r, key, bounds)) is not None)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], color=colours[block],
                        marker="o" if cond == "cond" else "s", label=f"{block} {cond}",
                        linestyle="-" if cond == "cond" else "--")
        lo, hi = min(values), max(values)
        if hi - lo < MIN_SPAN:   # widen around the data, inside the bounds
            mid = (lo + hi) / 2
            lo, hi = mid - MIN_SPAN / 2, mid + MIN_SPAN / 2
            if bounds[1] is not None and hi > bounds[1]:
                lo, hi = lo - (hi - bounds[1]), bounds[1]
            if bounds[0] is not None and lo < bounds[0]:
                lo, hi = bounds[0], hi + (bounds[0] - lo)
        pad = 0.08 * (hi - lo)
        ax.set_ylim(lo - pad, hi + pad)
        ax.ticklabel_format(axis="y", useOffset=False, style="plain")
        ax.set_xlabel("t (1.0 = first step, pure noise)", fontsize=10)
        ax.set_title(title, fontsize=11)
        ax.tick_params(labelsize=9)
        ax.grid(alpha=0.3)
        ax.invert_xaxis()
        ax.legend(fontsize=9, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
        fig.tight_layout()
        name = f"plot_{key}.png"
        fig.savefig(out / name)
        plt.close(fig)
        files.append(name)
    return files, constant


def _img(path: Path):
    from PIL import Image
    if not path.exists():
        return None
    return torch.from_numpy(np.array(Image.open(path).convert("RGB"))).float() / 255


TILE = 112          # px of each picture on a concept card
CAPTION = 30        # px of caption under each picture (two lines)


def _font(size: int):
    from PIL import ImageFont
    try:
        return ImageFont.load_default(size=size)   # Pillow >= 10.1: a scalable built-in font
    except TypeError:
        return ImageFont.load_default()


def card_image(title: str, subtitle: str, tiles: list[tuple[torch.Tensor, str, str]]):
    """One PNG per concept: a title (id and labels), a subtitle (which SAE), and each picture with
    a two-line caption under it, so the picture says what it shows wherever it is looked at."""
    from PIL import Image, ImageDraw
    gap = 6
    width = max(len(tiles), 1) * (TILE + gap) + gap
    head = 40
    card = Image.new("RGB", (max(width, 2 * TILE), head + TILE + CAPTION + gap), "white")
    draw = ImageDraw.Draw(card)
    draw.text((gap, 3), title, fill=(0, 0, 0), font=_font(14))
    draw.text((gap, 22), subtitle, fill=(90, 90, 90), font=_font(11))
    for i, (pic, line1, line2) in enumerate(tiles):
        x = gap + i * (TILE + gap)
        arr = F.interpolate(pic.permute(2, 0, 1)[None], size=(TILE, TILE), mode="nearest")[0].permute(1, 2, 0)
        card.paste(Image.fromarray((arr.clamp(0, 1).numpy() * 255).astype(np.uint8)), (x, head))
        draw.text((x, head + TILE + 2), line1, fill=(0, 0, 0), font=_font(11))
        draw.text((x, head + TILE + 15), line2, fill=(90, 90, 90), font=_font(10))
    return card


def concept_cards(sae_entry, concepts, shards: ShardSet, key: str, images_dir: Path, out: Path, tag: str,
                  max_cards: int = 40, patches: int = 3) -> list[dict]:
    labelled = sorted(concepts.concepts, key=lambda c: -len(concepts.concepts[c]["labels"]))[:max_cards]
    if not labelled:
        return []
    ids = torch.tensor(labelled)
    best: dict[int, list] = {c: [] for c in labelled}
    for pid, rows, hw in image_codes(shards, key):
        with torch.no_grad():
            code = sae_entry.sae.encode(rows)
        dense = torch.zeros(rows.shape[0], sae_entry.sae.n_latents).scatter_(1, code.indices, code.values)
        maps = dense[:, ids].t().reshape(len(labelled), *hw)
        for c, m in zip(labelled, maps):
            if float(m.max()) > 0:
                best[c].append((float(m.max()), pid, m))
    cards = []
    for c in labelled:
        top = sorted(best[c], key=lambda x: -x[0])[:patches]
        tiles = []
        for j, (strength, pid, m) in enumerate(top):
            img = _img(images_dir / f"{pid:06d}.png")
            if img is None:
                continue
            H, W = img.shape[:2]
            h, w = m.shape
            if j == 0:   # where the concept is active on its strongest image
                heat = F.interpolate((m / m.max())[None, None], size=(H, W), mode="bilinear", align_corners=False)[0, 0]
                overlay = img * 0.45 + torch.stack([heat, heat * 0.2, heat * 0.1], -1) * 0.55
                tiles.append((overlay, "activation map", f"image {pid}"))
            y, x = divmod(int(m.argmax()), w)
            cy, cx = int((y + 0.5) * H / h), int((x + 0.5) * W / w)
            r = max(H // h, W // w) * 2
            crop = img[max(0, cy - r):cy + r, max(0, cx - r):cx + r]
            tiles.append((crop, f"top patch {j + 1}", f"image {pid}, act {strength:.2f}"))
        counts = concepts.concepts[c]["counts"]
        labels = concepts.labels(c)
        title = f"concept {c}: " + (", ".join(f"{lab} ({counts.get(lab, 0)})" for lab in labels[:4]) or "no label")
        name = f"{tag}_c{c}.png"
        subtitle = f"{key.replace('|', '  ')}    label (held-out images where it matched)"
        card_image(title, subtitle, tiles).save(out / name)
        cards.append({"cid": c, "labels": labels, "counts": counts, "files": [name]})
    return cards


def build_report(out: Path, sae_path, dict_path, metrics_path, eval_shards, masks_dir=None, images_dir=None,
                 synthetic_note: str = "", truth: list | None = None, smoke: dict | None = None) -> Path:
    out = check_writable(out, "--out")
    rows = read_json(Path(metrics_path)).get("rows")
    if not isinstance(rows, list) or not rows:
        raise SAEFileError(metrics_path, "not a metrics file from `sae-concepts evaluate` (no rows)")
    sae_set = load_sae(sae_path)
    dictionary = ConceptDictionary.load(dict_path)
    dictionary.check_built_from(sae_set)
    plots, constant = plot_metrics(rows, out)
    shards = ShardSet.open(eval_shards)
    images_dir = Path(images_dir) if images_dir else Path(eval_shards) / "images"
    sections = []
    for i, e, key in shards.held_saes(sae_set, sae_path):
        concepts = dictionary.for_sae(e.info.block, e.info.t, e.info.cond)
        if concepts is None:
            continue
        for card in concept_cards(e, concepts, shards, key, images_dir, out, f"s{i}"):
            sections.append((e.info.label(), card))
    write_text_atomic(out / "index.html", render_html(rows, plots, constant, sections, synthetic_note, truth, smoke))
    return out / "index.html"


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return "–" if math.isnan(v) else f"{v:.3f}"
    return html.escape(str(v))


def render_html(rows, plots, constant, sections, note, truth, smoke) -> str:
    bounds = {k: b for k, _, b in METRICS}
    cols = ["block", "t", "cond", "vectors"] + [k for k, _, _ in METRICS]
    table = "<tr>" + "".join(f"<th>{c}</th>" for c in cols) + "</tr>" + "".join(
        "<tr>" + "".join(f"<td>{_fmt(metric_value(r, c, bounds[c]) if c in bounds else r.get(c))}</td>"
                         for c in cols) + "</tr>" for r in rows)
    same = f"<p>Same for every SAE, so not plotted: {html.escape('; '.join(constant))}.</p>" if constant else ""
    truth_html = ""
    if truth:
        truth_html = "<h2>Truth checks (synthetic data)</h2><table><tr><th>block</th><th>t</th><th>cond</th>" \
                     "<th>planted concepts recovered</th><th>dictionary labels right</th></tr>" + "".join(
            f"<tr><td>{r['block']}</td><td>{r['t']}</td><td>{r['cond']}</td><td>{r['recovered']:.0%}</td>"
            f"<td>{r['labels_right']:.0%}</td></tr>" for r in truth) + "</table>"
    smoke_html = ""
    if smoke and "skipped" in smoke:
        smoke_html = f"<h2>ComfyUI collection (smoke run)</h2><p>Skipped: {html.escape(smoke['skipped'])}.</p>"
    elif smoke:
        smoke_html = (f"<h2>ComfyUI collection (smoke run)</h2><p>Collected for real through ComfyUI from a "
                      f"{html.escape(smoke['checkpoint'])}: {html.escape(json.dumps(smoke['vectors']))} vectors in "
                      f"{html.escape(smoke['folder'])}. Random weights hold no concepts; this only shows the real "
                      f"collection path working.</p>")
    keys = sorted({k for k, _ in sections})
    def card_html(k, c):
        search = html.escape(" ".join(c["labels"]).lower())
        shown = html.escape(", ".join(f"{lab} ({c['counts'].get(lab, 0)})" for lab in c["labels"][:6]))
        imgs = "".join(f"<img src='{f}' loading='lazy'>" for f in c["files"])
        return (f"<div class='card' data-key='{html.escape(k)}' data-labels='{search}'><b>concept {c['cid']}</b> "
                f"<span class='key'>{html.escape(k)}</span><br><span class='labels'>{shown}</span><br>{imgs}</div>")
    cards = "".join(card_html(k, c) for k, c in sections)
    options = "".join(f"<option>{html.escape(k)}</option>" for k in keys)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>SAE Concepts report</title>
<style>body{{font-family:sans-serif;margin:20px;max-width:1300px}} table{{border-collapse:collapse;font-size:12px}}
td,th{{border:1px solid #ccc;padding:3px 6px}} .note{{background:#fff3cd;padding:8px;border:1px solid #e0c060}}
.card{{display:inline-block;border:1px solid #bbb;margin:4px;padding:6px;vertical-align:top;font-size:12px}}
.card img{{margin:2px;border:1px solid #ddd}} .key{{color:#777}} .labels{{color:#164}}</style></head><body>
<h1>SAE Concepts report</h1>{f'<p class="note">{html.escape(note)}</p>' if note else ''}
<h2>Metrics per (block, t, cond)</h2><table>{table}</table>
<h2>Plots</h2>{''.join(f'<img src="{p}">' for p in plots)}{same}
{truth_html}{smoke_html}
<h2>Concepts</h2><p>Search by word: <input id="q" placeholder="e.g. dog"> SAE: <select id="k"><option value="">all</option>{options}</select>
<span id="n"></span></p><div id="cards">{cards}</div>
<script>
function f(){{var q=document.getElementById('q').value.toLowerCase().trim(),k=document.getElementById('k').value,n=0;
document.querySelectorAll('.card').forEach(function(c){{var ok=(!q||c.dataset.labels.indexOf(q)>=0)&&(!k||c.dataset.key==k);
c.style.display=ok?'inline-block':'none';if(ok)n++;}});document.getElementById('n').textContent=n+' concepts';}}
document.getElementById('q').oninput=f;document.getElementById('k').onchange=f;f();
</script></body></html>"""
