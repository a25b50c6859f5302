"""The paper's tables, ours beside its numbers, as markdown and in the HTML report."""
from __future__ import annotations

import math
from pathlib import Path

from ....sae_core.atomic import write_text_atomic


from ...evaluate.evaluate import LOCALISES_MARGIN, block_then_t_down, localises
from .config import PAPER, WINDOWS


# -- tables -----------------------------------------------------------------------------------

def pct(v) -> str:
    return "–" if v is None else f"{100 * v:.0f} %"


def num(v, fmt=".2f") -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def window_of(win) -> str:
    for name, w in WINDOWS.items():
        if tuple(win) == w:
            return name
    return f"{win[0]:g}-{win[1]:g}"


def sensitivity_markdown(rows: list[dict]) -> list[str]:
    """Table (e): how much the image depends on each block (sensitivity.py)."""
    n = rows[0]["n"] if rows else 0
    lines = ["", "### (e) How much the image depends on each block",
             f"A random edit of r x ||Delta_ij|| (a random direction at each position, every step, cond and uncond "
             f"rows) added to one transformer block's Delta, or (edit 'stream') of r x ||output_ij||, the size of "
             f"the residual stream after the block; RMSE against the unedited images (over all their pixels, in 0-1) "
             f"and the share of the {n} images in which the detector reads the same objects and style.",
             "", "| block | grid | edit | r | RMSE | same reading |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['block']} | {r['resolution']} | {r.get('edit', 'delta')} | {r['ratio']:g} | "
                     f"{num(r['rmse'], '.3f')} | {pct(r['same_reading'])} |")
    return lines


# The steered blocks "hardly" move the image when a random edit there moves it by less than this
# share of what the same edit moves it by at the most sensitive block.
HARDLY = 0.1


def suppression_how(c: dict) -> str:
    """How a suppression condition steered, in the reading and the strip captions."""
    return "removing the concept's contribution" if c["normalisation"] == "remove" else \
        f"beta {c['beta']:g}, {c['normalisation']} normalisation"


def condition_caption(c: dict) -> str:
    """A steering strip's caption: what was steered, where, how hard (the images in task order)."""
    window = f"{window_of(c['window'])} window {c['window'][0]:g}-{c['window'][1]:g}"
    if c["kind"] == "spatial":
        what = f"Spatial steering, {window}, beta {c['beta']:g}, {c['rows']} CFG rows"
    elif c["kind"] == "style":
        what = f"Style steering, {window}, {c['normalisation']} normalisation, beta {c['beta']:g}"
    else:
        what = f"Suppressing the prompted {c['kind'].split('_')[1]}, whole trajectory, {suppression_how(c)}"
    success = "" if c.get("success") is None else f"; success {100 * c['success']:.0f} % of {c['n']}"
    return what + success


def _best(conds: list[dict]) -> dict | None:
    done = [c for c in conds if c.get("success") is not None]
    return max(done, key=lambda c: c["success"]) if done else None


def _composition_line(rows: list[dict]) -> list[str]:
    iou = [r for r in rows if r.get("composition_iou") is not None and r.get("composition_iou_everywhere") is not None]
    if not iou:
        return []
    beats = [r for r in iou if localises(r)]
    b = max(iou, key=lambda r: r["composition_iou"])
    paper_row = next((r for r in iou if r["block"] == "middle_block.1" and r["t"] == 1.0 and r["cond"] == "cond"), None)
    ours = f"; ours there {paper_row['composition_iou']:.2f}" if paper_row else ""
    verdict = "localise the objects" if len(beats) == len(iou) else \
        "do not localise the objects" if not beats else "localise the objects in some (block, t) only"
    return [f"- Composition (a): {len(beats)} of {len(iou)} concept maps beat a map of the whole image by more than "
            f"{LOCALISES_MARGIN:g} IoU (best {b['composition_iou']:.2f}, {b['block']}, t = {num(b['t'], 'g')}, {b['cond']}, "
            f"against {b['composition_iou_everywhere']:.2f}): the maps {verdict} (paper: "
            f"{PAPER['composition_mid_t1']:.2f} at the mid block at t = 1, cond{ours})."]


def _in_none(conds: list[dict], kind: str) -> str:
    n = sum(1 for c in conds if c["kind"] == kind and c.get("success") is not None)
    return f"in none of the images of any of the {n} conditions"


def _steering_lines(steering: dict) -> list[str]:
    base, conds, lines = steering["unsteered_success"], steering["conditions"], []
    for kind, what in (("spatial", "Spatial steering (b): the asked object in the asked quadrant"),
                       ("style", "Style steering (c): the asked background style")):
        c = _best([c for c in conds if c["kind"] == kind])
        if c is None:
            continue
        if c["success"] == 0:   # no best cell to name: every condition failed every image
            lines.append(f"- {what} {_in_none(conds, kind)} (unsteered {pct(base.get(kind))}; "
                         f"paper: up to {pct(max(PAPER[kind].values()))}).")
            continue
        window = window_of(c["window"])
        how = f"{c['normalisation']} normalisation" if kind == "style" else f"{c['rows']} rows"
        lines.append(f"- {what} in at best {pct(c['success'])} of images ({window} window, {how}, beta {c['beta']:g}; "
                     f"unsteered {pct(base.get(kind))}; paper: {pct(PAPER[kind].get(window))} in that window"
                     + ("" if PAPER[kind].get(window) == max(PAPER[kind].values()) else
                        f", up to {pct(max(PAPER[kind].values()))} in its best") + ").")
    for kind, what, kept in (("suppress_object", "the prompted object gone", "the other prompted object"),
                             ("suppress_style", "the prompted style gone", "the prompted objects")):
        c = _best([c for c in conds if c["kind"] == kind])
        if c is None or base.get(kind) is None:
            continue
        if c["success"] == 0:
            lines.append(f"- Suppression (d): {what} {_in_none(conds, kind)} (unsteered {pct(base[kind])}).")
            continue
        how = suppression_how(c)
        lines.append(f"- Suppression (d): {what} in at best {pct(c['success'])} of images against {pct(base[kind])} "
                     f"unsteered ({100 * (c['success'] - base[kind]):+.0f} points; {how}), {kept} kept in "
                     f"{pct(c.get('kept'))}.")
    return lines


def _sensitivity_line(sensitivity: list[dict], steering: dict | None) -> list[str]:
    delta = [r for r in sensitivity if r.get("edit", "delta") == "delta"]
    if not delta:
        return []
    top = max(r["ratio"] for r in delta)
    rows = [r for r in delta if r["ratio"] == top]
    parts = ", ".join(f"{r['block']} ({r['resolution']}) {num(r['rmse'], '.3f')}" for r in rows)
    steered = {b for c in (steering or {}).get("conditions", []) for bs in c.get("blocks", {}).values() for b in bs}
    at = [r for r in rows if r["block"] in steered and r["rmse"] is not None]
    said = ""
    if at:
        most = max(at, key=lambda r: r["rmse"])
        said = f" The steered blocks move it by at most {num(most['rmse'], '.3f')} ({most['block']})"
        largest = max(r["rmse"] for r in rows if r["rmse"] is not None)
        said += (f", under {pct(HARDLY)} of the most sensitive block's {largest:.3f}: an image that hardly depends on a "
                 f"block cannot be steered there." if most["rmse"] < HARDLY * largest else ".")
    return [f"- Block sensitivity (e), RMSE of the image (0-1) after a random edit of {top:g} x Delta: {parts}.{said}"]


def reading_lines(metrics_rows: list[dict], steering: dict | None, sensitivity: list[dict] | None) -> list[str]:
    """What the tables say, in a few lines computed from them (the CLI prints them last, so a
    reader sees the verdicts without reading every table)."""
    return (_composition_line(metrics_rows) + (_steering_lines(steering) if steering else [])
            + (_sensitivity_line(sensitivity, steering) if sensitivity else []))


READING_HEADING = "### What the tables say"


def without_reading(md: str) -> str:
    """The tables without their reading section (the CLI prints the reading last instead, once)."""
    lines, out, skipping = md.splitlines(), [], False
    for line in lines:
        if line == READING_HEADING:
            skipping = True
        elif skipping and line.startswith("### "):
            skipping = False
        if not skipping:
            out.append(line)
    return "\n".join(out) + "\n"


def tables_markdown(metrics_rows: list[dict], steering: dict | None, meta: dict, edit_size: list[dict] | None = None,
                    sensitivity: list[dict] | None = None) -> str:
    trained = meta.get("trained") or f"step {meta.get('step')}"
    lines = [f"Toy World model: {meta.get('weights')} ({trained}); {meta.get('images')}; "
             f"DDIM {meta.get('steps')} steps, CFG {meta.get('cfg')}."
             + (f" Measured on {meta['machine']}." if meta.get("machine") else ""), ""]
    reading = reading_lines(metrics_rows, steering, sensitivity)
    if reading:
        lines += [READING_HEADING, "", *reading, ""]
    lines += ["### (a) Composition emergence: concept-map IoU with the final image's objects",
              "", "IoU (ours) is the paper's method (top concept per position, cosine of its label embedding with the "
              "object's word vector > 0.5); 'label' predicts only where the top concept's own labels hold the object's "
              "label; 'everywhere' is the IoU of predicting the whole image (a map that localises nothing); "
              "'predicted' is the share of the image the paper's map predicts.",
              "", "| block | t | cond | IoU (ours) | label | everywhere | predicted | objects | cohesion | "
                  "inter-concept sim. | FVU | paper |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(metrics_rows, key=block_then_t_down):
        paper = "0.26 (mid, t=1; saturating by t=0.5)" if r["block"] == "middle_block.1" and r["t"] == 1.0 and r["cond"] == "cond" else ""
        lines.append(f"| {r['block']} | {r['t']:g} | {r['cond']} | {num(r.get('composition_iou'))} | "
                     f"{num(r.get('composition_iou_label'))} | {num(r.get('composition_iou_everywhere'))} | "
                     f"{num(r.get('predicted_fraction'))} | {r.get('objects', '–')} | "
                     f"{num(r.get('cohesion'))} | {num(r.get('inter_concept_similarity'))} | {num(r.get('fvu'))} | {paper} |")
    if not steering:
        return "\n".join(lines) + "\n"
    conds = steering["conditions"]
    base = steering["unsteered_success"]
    missing = steering.get("missing_labels", {})

    def none_labelled(kind: str) -> list[str]:
        what = "object (colour shape)" if kind in ("spatial", "suppress_object") else "style"
        return [f"Not measured: no concept of the steered blocks is labelled with any {what} in the dictionary."] \
            if missing.get(kind) else []
    lines += ["", "### (b) Spatial steering: an object not in the prompt, into a quadrant",
              f"Success = the detector finds that colour+shape centred in the quadrant (unsteered: {pct(base.get('spatial'))}).",
              "", *none_labelled("spatial"),
              "| window | beta | rows | success (ours) | colour in quadrant | RMSE | SSIM | paper |", "|---|---|---|---|---|---|---|---|"]
    for c in [c for c in conds if c["kind"] == "spatial"]:
        w = window_of(c["window"])
        lines.append(f"| {w} | {c['beta']:g} | {c['rows']} | {pct(c['success'])} ({c['n']}) | {pct(c.get('colour_in_quadrant'))} | "
                     f"{num(c['rmse'], '.3f')} | {num(c['ssim'])} | {pct(PAPER['spatial'][w])} |")
    lines += ["", "### (c) Global style steering: change the background style",
              f"Success = the detector's style is the target (unsteered: {pct(base.get('style'))}). Normalisation of "
              "beta * ||z_ij||: sum = / sum ||z|| (the paper as written), mean = / mean ||z||, none = no division.",
              *none_labelled("style"), "", "| window | normalisation | beta | success (ours) | RMSE | SSIM | paper |", "|---|---|---|---|---|---|---|"]
    for c in [c for c in conds if c["kind"] == "style"]:
        w = window_of(c["window"])
        lines.append(f"| {w} | {c['normalisation']} | {c['beta']:g} | {pct(c['success'])} ({c['n']}) | "
                     f"{num(c['rmse'], '.3f')} | {num(c['ssim'])} | {pct(PAPER['style'][w])} |")
    if edit_size:
        lines += ["", "Size of the style edit at the paper's middle beta = 10 on this model's own Delta (t = 0.5, cond; "
                  "mean over positions of ||change|| / ||Delta||):", "",
                  "| block | positions | sum (as written) | mean | none |", "|---|---|---|---|---|"]
        for r in edit_size:
            lines.append(f"| {r['block']} | {r['positions']} | {num(r['sum'], '.3f')} | {num(r['mean'], '.3f')} | "
                         f"{num(r['none'], '.3f')} |")
    lines += ["", "### (d) Negative steering (suppression), whole trajectory",
              f"Success = the prompted object is gone / the style is no longer the prompted one (unsteered: "
              f"object {pct(base.get('suppress_object'))}, style {pct(base.get('suppress_style'))}); kept = the "
              "other prompted object is still found.", *none_labelled("suppress_object"),
              *none_labelled("suppress_style"), "",
              "| target | method | beta | success | change vs unsteered | kept | RMSE | SSIM |", "|---|---|---|---|---|---|---|---|"]
    for c in [c for c in conds if c["kind"].startswith("suppress")]:
        method = ("remove the concept's own contribution (SpatialConceptSteer, empty region)" if c["normalisation"] == "remove"
                  else f"negative GlobalStyleSteer ({c['normalisation']})")
        unsteered = base.get(c["kind"])
        change = "–" if c["success"] is None or unsteered is None else f"{100 * (c['success'] - unsteered):+.0f} points"
        lines.append(f"| {c['kind'].split('_')[1]} | {method} | {c['beta']:g} | {pct(c['success'])} ({c['n']}) | {change} | "
                     f"{pct(c.get('kept'))} | {num(c['rmse'], '.3f')} | {num(c['ssim'])} |")
    if sensitivity:
        lines += sensitivity_markdown(sensitivity)
    return "\n".join(lines) + "\n"


def markdown_to_html(md: str) -> str:
    """The tables above as HTML (pipes -> table rows, "- " lines -> a list), headings and paragraphs kept."""
    import html
    out, in_table, in_list = [], False, False
    for line in md.splitlines():
        if line.startswith("|"):
            if in_list:
                out.append("</ul>")
                in_list = False
            cells = [c.strip() for c in line.strip("|").split("|")]
            if set("".join(cells)) <= set("-"):
                continue
            tag = "th" if not in_table else "td"
            if not in_table:
                out.append("<table>")
                in_table = True
            out.append("<tr>" + "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in cells) + "</tr>")
            continue
        if in_table:
            out.append("</table>")
            in_table = False
        if line.startswith("- "):
            if not in_list:
                out.append("<ul>")
                in_list = True
            out.append(f"<li>{html.escape(line[2:])}</li>")
            continue
        if in_list:
            out.append("</ul>")
            in_list = False
        if line.startswith("### "):
            out.append(f"<h3>{html.escape(line[4:])}</h3>")
        elif line.strip():
            out.append(f"<p>{html.escape(line)}</p>")
    if in_table:
        out.append("</table>")
    if in_list:
        out.append("</ul>")
    return "\n".join(out)


def add_to_report(index_html: Path, md: str, pictures: list[tuple[str, str, bool]]) -> None:
    """Put the tables and the pictures ((file name, caption, whether the picture draws its caption
    itself) triples) first on the report's page, under its title: they are what the run found; the
    SAEs' own metrics, plots and concept cards follow."""
    import html
    text = index_html.read_text()
    imgs = "".join(f"<figure><img src='{html.escape(p)}' alt='{html.escape(caption)}' "
                   f"loading='lazy' style='image-rendering:pixelated;max-width:100%'>"
                   + ("" if drawn else f"<figcaption>{html.escape(caption)}</figcaption>") + "</figure>"
                   for p, caption, drawn in pictures)
    section = ("<h2>The paper on the Toy World</h2>" + markdown_to_html(md) + imgs
               + "<hr><p>Below: the SAEs behind these tables, their metrics, plots and concept cards.</p>")
    title_end = text.find("</h1>")
    if title_end >= 0:
        title_end += len("</h1>")
        text = text[:title_end] + section + text[title_end:]
    else:
        text = section + text
    write_text_atomic(index_html, text)
