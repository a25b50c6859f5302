"""`sae-concepts report`: a static HTML report: metrics in the paper's shape, plots, and one
card per labelled concept (labels, top-activating image patches, activation map), searchable
by word. An ITDA set's atoms are concepts whose first label is where they came from: their
cards open with the source image and patch (from the collection the set was built from)."""
from __future__ import annotations

import html
import json
import math
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ...sae_core import load_sae
from ...sae_core.atomic import check_writable, write_text_atomic
from ...sae_core.concept_dictionary import ConceptDictionary
from ...sae_core.errors import ConfigError, DictionaryMismatchError, SAEConceptsError, SAEFileError
from ...sae_core.foreign_formats import read_json
from ...sae_core.itda import ItdaDictionary
from ..dictionary.dictionary import image_codes
from ..evaluate.evaluate import LOCALISES_MARGIN, localises
from ..storage.shards import ShardSet

# (key, title, bounds): a bounded quantity is clamped into its bounds before it is shown, so
# float rounding (a cosine of 1.00000003) does not show up as a trend.
METRICS = [("fvu", "FVU (lower is better)", (0.0, None)),
           ("l0", "L0 (active latents per vector)", (0.0, None)),
           # Not the training bar's "dead" (no firing for dead_after training vectors): a small
           # evaluation split leaves more latents unfired, so this reads higher.
           ("dead_fraction", "dead fraction: never fire on the eval vectors (lower is better)", (0.0, 1.0)),
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
OUTLINE = (1.0, 0.1, 0.1)   # colour of an ITDA atom's source token on its pictures


def default_font(size: int):
    """PIL's built-in font at `size` where Pillow can scale it (>= 10.1), else its fixed one."""
    from PIL import ImageFont
    try:
        return ImageFont.load_default(size=size)   # Pillow >= 10.1: a scalable built-in font
    except TypeError:
        return ImageFont.load_default()


NO_ACTIVATION = "does not fire on any evaluation image"


def card_image(title: str, subtitle: str, tiles: list[tuple[torch.Tensor, str, str]], empty: str = NO_ACTIVATION):
    """One PNG per concept: a title (id and labels), a subtitle (which SAE), and each picture with
    a two-line caption under it, so the picture says what it shows wherever it is looked at; as
    wide as its title and subtitle need. Without pictures it says why (`empty`) instead of showing nothing."""
    from PIL import Image, ImageDraw
    gap = 6
    head = 40
    fonts = (default_font(14), default_font(11))
    text_width = max(round(fonts[0].getlength(title)), round(fonts[1].getlength(subtitle)),
                     0 if tiles else round(fonts[1].getlength(empty)) + 2 * gap) + 2 * gap
    width = max(len(tiles) * (TILE + gap) + gap, 2 * TILE, text_width)
    card = Image.new("RGB", (width, head + TILE + CAPTION + gap), "white")
    draw = ImageDraw.Draw(card)
    draw.text((gap, 3), title, fill=(0, 0, 0), font=fonts[0])
    draw.text((gap, 22), subtitle, fill=(90, 90, 90), font=fonts[1])
    if not tiles:
        draw.rectangle((gap, head, width - gap, head + TILE), outline=(200, 200, 200), fill=(245, 245, 245))
        draw.text((2 * gap, head + TILE // 2 - 7), empty, fill=(90, 90, 90), font=fonts[1])
    for i, (pic, line1, line2) in enumerate(tiles):
        x = gap + i * (TILE + gap)
        arr = F.interpolate(pic.permute(2, 0, 1)[None], size=(TILE, TILE), mode="nearest")[0].permute(1, 2, 0)
        card.paste(Image.fromarray((arr.clamp(0, 1).numpy() * 255).astype(np.uint8)), (x, head))
        draw.text((x, head + TILE + 2), line1, fill=(0, 0, 0), font=default_font(11))
        draw.text((x, head + TILE + 15), line2, fill=(90, 90, 90), font=default_font(10))
    return card


def concept_cards(sae_entry, concepts, shards: ShardSet, key: str, images_dir: Path, out: Path, tag: str,
                  max_cards: int = 40, patches: int = 3, ids: list[int] | None = None,
                  provenance: "Provenance | None" = None) -> list[dict]:
    """One card per labelled concept (or per id of `ids`). With `provenance` (an ITDA set's), an
    atom's first label and first pictures are the patch it was taken from."""
    if ids is None:
        ids = sorted(concepts.concepts, key=lambda c: -len(concepts.concepts[c]["labels"]))[:max_cards]
    labelled = list(ids)
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
        source_label = ""
        if provenance is not None:
            source_label, source_tiles = provenance.describe(sae_entry, c)
            tiles += source_tiles
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
        known = concepts is not None and c in concepts.concepts
        counts = concepts.concepts[c]["counts"] if known else {}
        labels = concepts.labels(c) if known else []
        name = f"{tag}_c{c}.png"
        if provenance is not None:
            title = f"atom {c}: {source_label.split(':')[0]}" + (f"; {', '.join(labels[:3])}" if labels else "")
            prompt = source_label.split(": ", 1)[1] if ": " in source_label else ""
            subtitle = f"{key.replace('|', '  ')}    {prompt}"
            labels = [source_label] + labels
        else:
            title = f"concept {c}: " + (", ".join(f"{lab} ({counts.get(lab, 0)})" for lab in labels[:4]) or "no label")
            subtitle = f"{key.replace('|', '  ')}    label (held-out images where it matched)"
        picture = card_image(title[:90], subtitle[:110], tiles,
                             NO_ACTIVATION if not top else f"its images are not in {images_dir}")
        picture.save(out / name)
        cards.append({"cid": c, "labels": labels, "counts": counts, "files": [name], "size": picture.size,
                      "fires": bool(top), "kind": "atom" if provenance is not None else "concept"})
    return cards


def _boxed(img: torch.Tensor, box: tuple[float, float, float, float], size: int = TILE) -> torch.Tensor:
    """img [H, W, 3] resized to size x size with the box (y0, x0, y1, x1, in img pixels) outlined in
    red, 2 px wide at the tile's size (drawn after resizing, so a small patch stays visible)."""
    H, W = img.shape[:2]
    tile = F.interpolate(img.permute(2, 0, 1)[None], size=(size, size), mode="nearest")[0].permute(1, 2, 0).clone()
    y0, x0 = int(box[0] * size / H), int(box[1] * size / W)
    y1, x1 = max(y0 + 3, int(round(box[2] * size / H))), max(x0 + 3, int(round(box[3] * size / W)))
    y0, x0, y1, x1 = max(0, y0), max(0, x0), min(size, y1), min(size, x1)
    red = torch.tensor(OUTLINE)
    for ys, xs in ((slice(y0, y0 + 2), slice(x0, x1)), (slice(y1 - 2, y1), slice(x0, x1)),
                   (slice(y0, y1), slice(x0, x0 + 2)), (slice(y0, y1), slice(x1 - 2, x1))):
        tile[ys, xs] = red
    return tile


def grid_picture(h: int, w: int, r: int, c: int, size: int = TILE) -> torch.Tensor:
    """A size x size picture of an h x w token grid with cell (r, c) filled: where a token sits when
    its image is not at hand."""
    pic = torch.full((size, size, 3), 0.93)
    ys = [int(i * size / h) for i in range(h + 1)]
    xs = [int(i * size / w) for i in range(w + 1)]
    if h <= size // 4 and w <= size // 4:   # lines only where cells stay a few pixels wide
        for y in ys[1:-1]:
            pic[y, :] = 0.7
        for x in xs[1:-1]:
            pic[:, x] = 0.7
    pic[ys[r]:max(ys[r + 1], ys[r] + 1), xs[c]:max(xs[c + 1], xs[c] + 1)] = torch.tensor(OUTLINE)
    return pic


class Provenance:
    """Where an ITDA set's atoms came from, read from the collection it was built from: each atom's
    prompt id (its text and image) and token position (its cell on the block's grid)."""

    def __init__(self, source: ShardSet | None, why_not: str = ""):
        self.source, self.why_not = source, why_not
        self.prompts: dict[int, tuple[str, dict]] = {}
        if source is not None:
            for sh in source.shards:
                texts = sh.get("prompts") or []
                for i, pid in enumerate(sh.get("prompt_ids", [])):
                    self.prompts[int(pid)] = (texts[i] if i < len(texts) else "", sh.get("grids", {}))

    @classmethod
    def for_entry(cls, entry, given: str | Path | None) -> "Provenance":
        """The collection `given`, else the one the ITDA file names (if it is still there); a
        collection that changed since the set was built is used with a warning in why_not."""
        recorded = entry.info.training.get("shards", "")
        where = Path(given) if given else Path(recorded) if recorded else None
        if where is None:
            return cls(None, "the ITDA file does not name its collection (built before it did): "
                             "pass --provenance-shards")
        try:
            source = ShardSet.open(where)
        except SAEConceptsError as e:
            return cls(None, f"its collection {where} cannot be opened ({e}): pass --provenance-shards")
        fp = entry.info.training.get("shards_fingerprint")
        warn = (f"{where} changed since the ITDA set was built (fingerprint {source.fingerprint()}, built from {fp}): "
                f"an image shown may not be its atom's source" if fp and fp != source.fingerprint() else "")
        return cls(source, warn)

    def describe(self, entry, atom: int) -> tuple[str, list[tuple[torch.Tensor, str, str]]]:
        """(label "image P, t=T, token (r, c) of h x w: prompt", pictures): the source image with
        the token's cell outlined and the cell enlarged with one cell around it; without the
        image, the cell on the grid; without the collection, the label only."""
        src = entry.sae.provenance(atom)
        pid, pos, t, block = src["prompt"], src["pos"], entry.info.t, entry.info.block
        prompt, grids = self.prompts.get(pid, ("", {}))
        grid = grids.get(block)
        where = f"token {pos}"
        if grid:
            h, w = int(grid[0]), int(grid[1])
            r, c = divmod(pos, w)
            where = f"token ({r}, {c}) of {h}x{w}"
        t_text = f", t={t:g}" if t is not None else ""
        label = f"from image {pid}{t_text}, {where}" + (f": {prompt}" if prompt else "")
        if self.source is None or not grid:
            return label, []
        img = _img(self.source.root / "images" / f"{pid:06d}.png")
        if img is None:
            return label, [(grid_picture(h, w, r, c), "source token", f"image {pid} not saved")]
        H, W = img.shape[:2]
        cy, cx = H / h, W / w
        cell = (r * cy, c * cx, (r + 1) * cy, (c + 1) * cx)
        y0, x0 = int(max(0, (r - 1) * cy)), int(max(0, (c - 1) * cx))
        y1, x1 = int(min(H, (r + 2) * cy)), int(min(W, (c + 2) * cx))
        zoom = _boxed(img[y0:y1, x0:x1], (cell[0] - y0, cell[1] - x0, cell[2] - y0, cell[3] - x0))
        return label, [(_boxed(img, cell), "source image", f"image {pid}{t_text}"),
                       (zoom, "source patch", f"token ({r}, {c})")]


def atom_usage(sae, shards: ShardSet, key: str) -> torch.Tensor:
    """How many of the key's vectors use each atom (value > 0): which unlabelled atoms get cards."""
    used = torch.zeros(sae.n_latents)
    for _, rows, _ in image_codes(shards, key):
        with torch.no_grad():
            code = sae.encode(rows)
        used.scatter_add_(0, code.indices[code.values > 0], torch.ones(int((code.values > 0).sum())))
    return used


def build_report(out: Path, sae_path, dict_path, metrics_path, eval_shards, masks_dir=None, images_dir=None,
                 synthetic_note: str = "", truth: list | None = None, smoke: dict | None = None,
                 provenance_shards=None, max_cards: int = 40) -> Path:
    """`provenance_shards`: the collection an ITDA set was built from (default: the one its file
    names), for its atoms' source patches."""
    out = check_writable(out, "--out")
    metrics = read_json(Path(metrics_path))
    rows = metrics.get("rows")
    if not isinstance(rows, list) or not rows:
        raise SAEFileError(metrics_path, "not a metrics file from `sae-concepts evaluate` (no rows)")
    sae_set = load_sae(sae_path)
    if images_dir and not (Path(images_dir).is_dir() and any(Path(images_dir).glob("*.png"))):
        raise ConfigError(f"--images {images_dir}: no folder of images (<prompt id>.png) there; leave --images out to "
                          f"use {Path(eval_shards) / 'images'}")
    dictionary = ConceptDictionary.load(dict_path)
    set_print = dictionary.check_built_from(sae_set)
    made_from = metrics.get("built_from") or {}   # absent in metrics written before it was recorded
    if made_from.get("fingerprint") and made_from["fingerprint"] != set_print:
        raise DictionaryMismatchError(
            f"--metrics {metrics_path} describes the SAE set {made_from.get('sae_file')} (fingerprint "
            f"{made_from['fingerprint']}), not {sae_path} (fingerprint {set_print}): the report "
            f"would put one set's metrics beside another's concepts. Run `sae-concepts evaluate --sae {sae_path}` first")
    plots, constant = plot_metrics(rows, out)
    shards = ShardSet.open(eval_shards)
    images_dir = Path(images_dir) if images_dir else Path(eval_shards) / "images"
    sections, notes = [], []
    for i, e, key in shards.held_saes(sae_set, sae_path):
        concepts = dictionary.for_sae(e.info.block, e.info.t, e.info.cond)
        provenance, ids = None, None
        if isinstance(e.sae, ItdaDictionary):
            # Every atom is a concept whose first label is where it came from: the dictionary's
            # labelled atoms first, then the ones the evaluation images use most.
            provenance = Provenance.for_entry(e, provenance_shards)
            if provenance.why_not:
                notes.append(f"{e.info.label()}: {provenance.why_not}")
            ids = sorted(concepts.concepts, key=lambda c: -len(concepts.concepts[c]["labels"]))[:max_cards] \
                if concepts is not None else []
            used = atom_usage(e.sae, shards, key)
            used[ids] = -1
            more = [int(a) for a in torch.argsort(used, descending=True, stable=True)[:max_cards - len(ids)]
                    if used[a] > 0]
            ids = ids + more
        elif concepts is None:
            continue
        for card in concept_cards(e, concepts, shards, key, images_dir, out, f"s{i}", max_cards=max_cards, ids=ids,
                                  provenance=provenance):
            sections.append((e.info.label(), card))
    write_text_atomic(out / "index.html", render_html(rows, plots, constant, sections, synthetic_note, truth, smoke,
                                                      notes))
    # Cards and plots an earlier report into this folder wrote and this one did not (another set,
    # other concepts): left behind they would look like part of this report.
    written = {f for _, card in sections for f in card["files"]} | set(plots)
    for stale in [*out.glob("s*_c*.png"), *out.glob("plot_*.png")]:
        if stale.name not in written and re.fullmatch(r"s\d+_c\d+\.png|plot_\w+\.png", stale.name):
            stale.unlink()
    return out / "index.html"


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return "–" if math.isnan(v) else f"{v:.3f}"
    return html.escape(str(v))


def _fmt_t(t) -> str:
    """A timestep as everywhere else in the report and the CLI: 1, 0.5, 0."""
    return "–" if t is None else f"{t:g}"


COUNTS = ("vectors", "labelled_concepts")   # shown as whole numbers; every other metric with 3 decimals


def _fmt_cell(row: dict, col: str, bounds: dict) -> str:
    if col == "t":
        return _fmt_t(row.get("t"))
    v = metric_value(row, col, bounds[col]) if col in bounds else row.get(col)
    return f"{v:.0f}" if col in COUNTS and isinstance(v, (int, float)) else _fmt(v)


def labels_notes(rows: list[dict], sections: list[tuple[str, dict]]) -> list[str]:
    """What a card's labels are worth, said above the cards: what the label counts mean, how many
    SAEs' concept maps localise objects at all on this run, and how many cards never fire."""
    concepts = [c for _, c in sections if c.get("kind") == "concept"]
    if not concepts:
        return []
    out = ["A concept's labels are the objects whose masks its activation map matched on held-out images "
           "(in brackets: on how many); they are evidence from these images, not names."]
    verdicts = [v for r in rows if (v := localises(r)) is not None]
    if verdicts:
        n = sum(verdicts)
        out[0] += (f" On this run the concept maps beat a map of the whole image (by more than {LOCALISES_MARGIN:g} "
                   f"composition IoU) for {n} of {len(verdicts)} SAEs")
        out[0] += (": no SAE's maps localise the objects, so read these labels as chance matches." if n == 0 else
                   "; where they do not (the metrics table), a label can be a chance match." if n < len(verdicts)
                   else ".")
    silent = sum(not c.get("fires", True) for c in concepts)
    if silent:
        out.append(f"Labelled concepts that fire on no evaluation image: {silent} of the {len(concepts)} cards shown (their "
                   f"cards say so). They were labelled on the held-out images and are silent on the evaluation split.")
    return out


def example_word(sections: list[tuple[str, dict]]) -> str:
    """The search box's example: the commonest first label among the cards (not a word the model lacks)."""
    from collections import Counter
    words = Counter(c["labels"][0].split(":")[0] for _, c in sections if c.get("labels") and c.get("kind") == "concept")
    return words.most_common(1)[0][0] if words else "a label"


def render_html(rows, plots, constant, sections, note, truth, smoke, notes=()) -> str:
    bounds = {k: b for k, _, b in METRICS}
    cols = ["block", "t", "cond", "vectors"] + [k for k, _, _ in METRICS]
    titles = {k: t for k, t, _ in METRICS}
    table = "<tr>" + "".join(f"<th>{html.escape(titles.get(c, c))}</th>" for c in cols) + "</tr>" + "".join(
        "<tr>" + "".join(f"<td>{_fmt_cell(r, c, bounds)}</td>"
                         for c in cols) + "</tr>" for r in rows)
    same = f"<p>Same for every SAE, so not plotted: {html.escape('; '.join(constant))}.</p>" if constant else ""
    truth_html = ""
    if truth:
        truth_html = "<h2>Truth checks (synthetic data)</h2><table><tr><th>block</th><th>t</th><th>cond</th>" \
                     "<th>planted concepts recovered</th><th>dictionary labels right</th></tr>" + "".join(
            f"<tr><td>{r['block']}</td><td>{_fmt_t(r['t'])}</td><td>{r['cond']}</td><td>{r['recovered']:.0%}</td>"
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
    notes_html = "".join(f'<p class="note">{html.escape(n)}</p>' for n in [*labels_notes(rows, sections), *notes])
    def card_html(k, c):
        search = html.escape(" ".join(c["labels"]).lower())
        shown = html.escape(", ".join(f"{lab} ({c['counts'][lab]})" if lab in c["counts"] else lab
                                      for lab in c["labels"][:6]))
        alt = html.escape(f"{c.get('kind', 'concept')} {c['cid']}, {k}: where it fires")
        size = f" width='{c['size'][0]}' height='{c['size'][1]}'" if c.get("size") else ""
        imgs = "".join(f"<img src='{f}' alt='{alt}' loading='lazy'{size}>" for f in c["files"])
        if not c.get("fires", True):
            shown += f" <i>({NO_ACTIVATION})</i>"
        return (f"<div class='card' data-key='{html.escape(k)}' data-labels='{search}'><b>{c.get('kind', 'concept')} "
                f"{c['cid']}</b> "
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
<h2>Plots</h2>{''.join(f'<img src="{p}" alt="{html.escape(Path(p).stem.replace("plot_", "").replace("_", " "))} by t">' for p in plots)}{same}
{truth_html}{smoke_html}
<h2>Concepts</h2>{notes_html}<p>Search by word: <input id="q" placeholder="e.g. {html.escape(example_word(sections))}"> SAE: <select id="k"><option value="">all</option>{options}</select>
<span id="n"></span></p><div id="cards">{cards}</div>
<script>
function f(){{var q=document.getElementById('q').value.toLowerCase().trim(),k=document.getElementById('k').value,n=0;
document.querySelectorAll('.card').forEach(function(c){{var ok=(!q||c.dataset.labels.indexOf(q)>=0)&&(!k||c.dataset.key==k);
c.style.display=ok?'inline-block':'none';if(ok)n++;}});document.getElementById('n').textContent=n+' concepts';}}
document.getElementById('q').oninput=f;document.getElementById('k').onchange=f;f();
</script></body></html>"""
