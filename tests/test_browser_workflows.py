"""Every shipped workflow, opened in ComfyUI's real frontend in a headless browser.

Needs ComfyUI, the frontend ComfyUI v0.8.0 pins (pip: comfyui-frontend-package==1.35.9), the
Python `playwright` package (driver only: no browser is downloaded) and a system Chromium
(Debian: apt-get install chromium). Skipped with the missing piece named otherwise.

Checks, per workflow, in the frontend's own graph after loading: every node type is known (no
missing-node placeholders), every widget value is one the widget accepts (combo values in their
option lists), and no two nodes overlap at the sizes the frontend gives them (title bar included).
`SAE_CONCEPTS_SCREENSHOTS=<dir>` also saves a screenshot of each workflow there.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "host_support"))
from comfy_server import REPO, comfy_server, frontend_root  # noqa: E402

WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
CHROMIUM = next((p for p in (os.environ.get("SAE_CONCEPTS_CHROMIUM"), shutil.which("chromium"),
                             shutil.which("chromium-browser"), shutil.which("google-chrome")) if p), None)

# Core loaders whose files (SDXL, Flux weights) are not installed in the test's models folder.
MODEL_FILE_LOADERS = {"CheckpointLoaderSimple", "UNETLoader", "DualCLIPLoader", "CLIPLoader", "VAELoader"}

# Read in the page after app.loadGraphData: nodes with their boxes (title bar included), missing
# types, and widgets whose value is not among their options.
INSPECT = """() => {
  const g = window.app.graph;
  const titleH = window.LiteGraph.NODE_TITLE_HEIGHT;
  return g._nodes.map(n => ({
    id: n.id, type: n.type, title: n.title,
    known: !!window.LiteGraph.registered_node_types[n.type],
    box: [n.pos[0], n.pos[1] - titleH, n.size[0], n.size[1] + titleH],
    min: Array.from(n.computeSize ? n.computeSize() : n.size),
    badWidgets: (n.widgets || []).filter(w => w.type === 'combo' && Array.isArray(w.options?.values)
                                            && !w.options.values.includes(w.value)).map(w => w.name + '=' + w.value),
  }));
}"""


def overlaps(nodes: list[dict]) -> list[tuple]:
    out = []
    for i, a in enumerate(nodes):
        for b in nodes[i + 1:]:
            ax, ay, aw, ah = a["box"]
            bx, by, bw, bh = b["box"]
            if ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah:
                out.append((f"{a['id']}:{a['title']}", f"{b['id']}:{b['title']}"))
    return out


@pytest.fixture(scope="module")
def frontend_page(comfy, tmp_path_factory):
    missing = [what for what, ok in (("pip package comfyui-frontend-package==1.35.9", frontend_root()),
                                     ("a system Chromium (apt-get install chromium)", CHROMIUM)) if not ok]
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing.append("pip package playwright")
    if missing:
        pytest.skip("NO BROWSER TEST: missing " + ", ".join(missing))
    from conftest import PLACEHOLDER, _torchvision_works
    sys.path.insert(0, str(Path(__file__).parent))
    from test_host_server import write_models
    base = tmp_path_factory.mktemp("browser_base")
    dummy = base / "dummy.safetensors"
    dummy.write_bytes(b"")   # listed by the checkpoint loader; never loaded (nothing is run here)
    write_models(base, dummy)
    # Every SAE file and dictionary the workflows name is listed (SAE files empty: nothing is
    # loaded here); the dictionaries hold every string our other nodes' widgets carry, so each
    # workflow's concept is among the concept combo's labels.
    from sae_concepts.sae_core.concept_dictionary import ConceptDictionary, SAEConcepts
    sae_dir = base / "models" / "sae"
    uis = [json.loads(w.read_text()) for w in WORKFLOWS]
    words = sorted({v for ui in uis for n in ui["nodes"] if n["type"].startswith("SAEConcepts_")
                    and n["type"] != "SAEConcepts_LoadSAE" for v in n.get("widgets_values", []) if isinstance(v, str)})
    for ui in uis:
        for n in ui["nodes"]:
            if n["type"] == "SAEConcepts_LoadSAE":
                sae_file, dictionary = sae_dir / n["widgets_values"][0], n["widgets_values"][1]
                if not sae_file.exists():
                    sae_file.parent.mkdir(parents=True, exist_ok=True)
                    sae_file.write_bytes(b"")
                if dictionary != "none" and not (sae_dir / dictionary).exists():
                    ConceptDictionary([SAEConcepts("middle_block.1", None, "both", {
                        i: {"labels": [w], "counts": {w: 1}} for i, w in enumerate(words)})]).save(sae_dir / dictionary)
    with comfy_server(comfy, base, frontend_root(), None if _torchvision_works() else PLACEHOLDER) as srv:
        # A first visit opens the templates browser over the canvas; mark the tutorial as seen.
        req = urllib.request.Request(srv["url"] + "/settings/Comfy.TutorialCompleted", data=b"true", method="POST")
        urllib.request.urlopen(req, timeout=10).close()
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                         args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 2600, "height": 1200})
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(srv["url"], wait_until="load", timeout=120_000)
            page.wait_for_function("() => window.app && window.app.graph && window.LiteGraph", timeout=120_000)
            yield page, srv, errors
            browser.close()


@pytest.mark.parametrize("workflow", [w.name for w in WORKFLOWS])
def test_workflow_opens_in_the_real_frontend_without_missing_nodes_or_overlaps(frontend_page, workflow):
    page, srv, errors = frontend_page
    data = json.loads((REPO / "workflows" / workflow).read_text())
    page.evaluate("async (wf) => { await window.app.loadGraphData(wf); }", data)
    page.wait_for_timeout(500)
    nodes = page.evaluate(INSPECT)
    assert len(nodes) == len(data["nodes"])
    assert not [n["type"] for n in nodes if not n["known"]], "missing node types"
    bad = {n["title"]: n["badWidgets"] for n in nodes if n["badWidgets"]
           and n["type"] not in MODEL_FILE_LOADERS}
    assert not bad, f"{workflow}: widget values not among their options: {bad}"
    assert not overlaps(nodes), f"{workflow}: overlapping nodes {overlaps(nodes)}"
    too_small = [(n["title"], n["box"][2:], n["min"]) for n in nodes
                 if n["box"][2] + 1 < n["min"][0] or n["box"][3] + 1 < n["min"][1]]
    assert not too_small, f"{workflow}: nodes smaller than the frontend's own minimum: {too_small}"
    shots = os.environ.get("SAE_CONCEPTS_SCREENSHOTS")
    if shots:
        Path(shots).mkdir(parents=True, exist_ok=True)
        # The whole graph, at a scale where the frontend still draws text (it drops it below ~0.6),
        # clipped to the nodes' bounds.
        clip = page.evaluate("""(boxes) => {
          const c = window.app.canvas, s = 0.62;
          const x0 = Math.min(...boxes.map(b => b[0])), y0 = Math.min(...boxes.map(b => b[1]));
          const x1 = Math.max(...boxes.map(b => b[0] + b[2])), y1 = Math.max(...boxes.map(b => b[1] + b[3]));
          c.ds.scale = s; c.ds.offset = [70 / s - x0, 90 / s - y0]; c.setDirty(true, true);
          const r = c.canvas.getBoundingClientRect();
          return {x: r.left + 60, y: r.top + 80, width: (x1 - x0) * s + 20, height: (y1 - y0) * s + 20};
        }""", [n["box"] for n in nodes])
        page.wait_for_timeout(300)
        page.screenshot(path=str(Path(shots) / f"{Path(workflow).stem}.png"), clip=clip)
    assert not errors, errors


def test_template_browser_shows_a_thumbnail_for_every_workflow(frontend_page):
    """The frontend's own template browser (Templates -> sae_concepts) asks the server for each
    template's thumbnail; every one must come back as an image."""
    page, srv, errors = frontend_page
    fetched = {}

    def on_response(r):
        if "/api/workflow_templates/sae_concepts/" in r.url and r.url.endswith(".jpg"):
            fetched[r.url.rsplit("/", 1)[1]] = (r.status, r.headers.get("content-type", ""))
    page.on("response", on_response)
    try:
        page.evaluate("() => window.app.extensionManager.command.execute('Comfy.BrowseTemplates')")
        page.get_by_text("sae_concepts", exact=False).first.click(timeout=30_000)
        deadline = 60_000
        while deadline > 0 and len(fetched) < len(WORKFLOWS):
            page.wait_for_timeout(500)
            deadline -= 500
        shots = os.environ.get("SAE_CONCEPTS_SCREENSHOTS")
        if shots:
            page.screenshot(path=str(Path(shots) / "template_browser.png"))
    finally:
        page.remove_listener("response", on_response)
        page.keyboard.press("Escape")
    want = {w.with_suffix(".jpg").name for w in WORKFLOWS}
    assert set(fetched) == want, f"thumbnails asked for: {sorted(fetched)}; expected {sorted(want)}"
    assert all(status == 200 and ctype.startswith("image/") for status, ctype in fetched.values()), fetched
