"""The Toy World model in a real headless ComfyUI server: our loader + the CORE nodes (CLIP Text
Encode, Empty Latent Image, KSampler, VAE Decode / Encode, Save Image) + every SAE Concepts node."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sae_concepts.sae_core import PAPER_BLOCKS, SAEEntry, SAEInfo, SaeConfig, TopKSAE, save_sae_set
from sae_concepts.sae_core.concept_dictionary import ConceptDictionary, SAEConcepts

sys.path.insert(0, str(Path(__file__).parent / "host_support"))
from comfy_server import comfy_server  # noqa: E402
from test_host_server import run, saved_image  # noqa: E402
from workflow_convert import ui_to_api  # noqa: E402

TOY_SAE = "toyworld_test_sae.safetensors"
TOY_DICT = "toyworld_test_dictionary.json"
REPO = Path(__file__).resolve().parent.parent
TOY_WORKFLOWS = sorted((REPO / "workflows").glob("toyworld_*.json"))
# The SD1.5 / SDXL / Flux workflows, run with the Toy World in place of their model (their thumbnails).
MODEL_WORKFLOWS = sorted(w for w in (REPO / "workflows").glob("*.json") if not w.name.startswith("toyworld_"))
sys.path.insert(0, str(REPO / "workflows"))
import toy_workflows  # noqa: E402

# The file names the toy workflows load (the shipped files' names).
SHIPPED_SAE, SHIPPED_DICT, SHIPPED_MODEL = toy_workflows.TOY_SAE, toy_workflows.TOY_DICTIONARY, toy_workflows.WEIGHTS


def toy_weights(folder: Path) -> Path:
    """The shipped weights when present, else a randomly initialised toy model (same format)."""
    from sae_concepts.host.toyworld.sampling import SHIPPED_WEIGHTS
    if SHIPPED_WEIGHTS.is_file():
        return SHIPPED_WEIGHTS
    from sae_concepts.training.toyworld.train import CHECKPOINT, ToyTrainConfig, ToyTrainer, export_weights
    trainer = ToyTrainer(ToyTrainConfig(out=str(folder)))
    # A fresh toy U-Net starts with zeroed output layers (it would ignore every edit): give them weights.
    g = torch.Generator().manual_seed(0)
    for v in trainer.ema.values():
        if v.is_floating_point() and v.ndim > 1 and not v.any():
            v.copy_(torch.randn(v.shape, generator=g) * 0.05)
    trainer.save_checkpoint(folder / CHECKPOINT)
    return export_weights(folder / CHECKPOINT, folder / "toyworld_test.safetensors")


# Trained files to run the toy workflows on instead of the shipped ones (e.g. a checkpoint's export
# and the SAE set + dictionary `sae-concepts toyworld paper` made for it): all three or none.
OVERRIDES = ("SAE_CONCEPTS_TOY_WEIGHTS", "SAE_CONCEPTS_TOY_SAE", "SAE_CONCEPTS_TOY_DICTIONARY")


def override_files() -> list[Path] | None:
    import os
    given = [os.environ.get(k) for k in OVERRIDES]
    return [Path(g) for g in given] if all(given) else None


def shipped_toy_files() -> bool:
    """Whether the toy workflows run on trained files (shipped, or given by OVERRIDES)."""
    from sae_concepts.nodes.toyworld_nodes import SHIPPED_SAE_DIR
    from sae_concepts.host.toyworld.sampling import SHIPPED_WEIGHTS
    return override_files() is not None or (SHIPPED_WEIGHTS.is_file() and (SHIPPED_SAE_DIR / SHIPPED_SAE).is_file()
                                            and (SHIPPED_SAE_DIR / SHIPPED_DICT).is_file())


def write_toy_models(base: Path, weights: Path) -> str:
    (base / "models" / "toyworld").mkdir(parents=True)
    (base / "models" / "toyworld" / "toy_under_test.safetensors").symlink_to(weights)
    sae_dir = base / "models" / "sae"
    sae_dir.mkdir(parents=True)
    given = override_files()
    if given is not None:          # trained files under the names the toy workflows load
        (base / "models" / "toyworld" / SHIPPED_MODEL).symlink_to(given[0].resolve())
        (sae_dir / SHIPPED_SAE).symlink_to(given[1].resolve())
        (sae_dir / SHIPPED_DICT).symlink_to(given[2].resolve())
    elif not shipped_toy_files():  # the toy workflows name the shipped files: stand-ins of the same names
        (base / "models" / "toyworld" / SHIPPED_MODEL).symlink_to(weights)
        write_random_toy_sae(sae_dir, SHIPPED_SAE, SHIPPED_DICT)
    write_random_toy_sae(sae_dir, TOY_SAE, TOY_DICT)
    if given is None and shipped_toy_files():
        from sae_concepts.nodes.toyworld_nodes import SHIPPED_SAE_DIR, SHIPPED_WEIGHTS
        toy_files = SHIPPED_SAE_DIR / SHIPPED_SAE, SHIPPED_WEIGHTS
    else:
        toy_files = sae_dir / SHIPPED_SAE, base / "models" / "toyworld" / SHIPPED_MODEL
    write_set_with_means(*toy_files, sae_dir / toy_workflows.TOY_SAE_WITH_MEANS)
    return "toy_under_test.safetensors"


def write_set_with_means(sae_path: Path, weights: Path, out: Path, seed: int = 0) -> None:
    """The SAE set with each feature's mean activation (SDLens's mean.pt, which mode 'sdlens' scales
    by): the mean of its nonzero code values over every position, step and row of toy samples of
    the training prompts' kind, at the SAE's block (cond / uncond rows as the SAE was trained)."""
    from sae_concepts.host.block_patch import patch_block
    from sae_concepts.sae_core import load_sae
    from sae_concepts.host.toyworld.comfy_parts import load_toy_parts
    from sae_concepts.host.toyworld.sampling import sample_images
    sae_set = load_sae(sae_path)
    model, clip, _ = load_toy_parts(weights.resolve())
    seen: dict = {}

    def recorder(block):
        def edit(delta, call):
            for kind in ("cond", "uncond"):
                rows = [i for i, k in enumerate(call.row_kinds) if k == kind]
                if rows:
                    d = delta[rows].detach().float()
                    seen.setdefault((block, kind), []).append(d.permute(0, 2, 3, 1).reshape(-1, d.shape[1]))
        return edit

    for block in sorted({e.info.block for e in sae_set}):
        model = patch_block(model, block, recorder(block))
    prompts = ["red circle on plain background", "blue square and yellow triangle on striped background",
               "green triangle on checkered background", "yellow circle and red square on dotted background"]
    with torch.no_grad():
        sample_images(model, clip.text_encoder, prompts, seed=seed, steps=10)
        entries = []
        for e in sae_set:
            kinds = ("cond", "uncond") if e.info.cond == "both" else (e.info.cond,)
            x = torch.cat([d for k in kinds for d in seen[(e.info.block, k)]])
            code = e.sae.encode(x)
            total = torch.zeros(e.sae.n_latents).index_add_(0, code.indices.flatten(), code.values.flatten().float())
            fired = torch.zeros(e.sae.n_latents).index_add_(0, code.indices.flatten(),
                                                            (code.values.flatten() > 0).float())
            entries.append(SAEEntry(e.sae, e.info, latent_mean=total / fired.clamp_min(1)))
    save_sae_set(out, entries)


def write_random_toy_sae(sae_dir: Path, sae_name: str, dict_name: str) -> None:
    entries = []
    for i, block in enumerate(PAPER_BLOCKS):
        sae = TopKSAE(SaeConfig(d_in=128, n_latents=512, k=8))
        sae.reset_parameters(torch.Generator().manual_seed(i))
        entries.append(SAEEntry(sae, SAEInfo(model_family="toyworld", block=block, t=None, cond="both")))
    save_sae_set(sae_dir / sae_name, entries)
    labels = {"red circle": [3, 4], "striped": [10], "blue square": [20]}
    ConceptDictionary([SAEConcepts(b, None, "both", {cid: {"labels": [w], "counts": {w: 1}}
                                                      for w, ids in labels.items() for cid in ids})
                       for b in PAPER_BLOCKS]).save(sae_dir / dict_name)


@pytest.fixture(scope="module")
def toy_server(comfy, tmp_path_factory):
    from conftest import PLACEHOLDER, _torchvision_works
    base = tmp_path_factory.mktemp("toy_base")
    weights = toy_weights(tmp_path_factory.mktemp("toy_weights"))
    name = write_toy_models(base, weights)
    frontend = base / "frontend"
    frontend.mkdir()
    (frontend / "index.html").write_text("<html>headless test</html>")
    with comfy_server(comfy, base, frontend, None if _torchvision_works() else PLACEHOLDER) as srv:
        srv["toy_weights"] = name
        yield srv


def graph(weights: str, steer: dict | None, empty: str = "toy", steps: int = 4) -> dict:
    """API-format prompt: Load Toy World -> CLIP Text Encode x2 -> (steer) -> KSampler -> VAE Decode -> Save."""
    g = {
        "1": {"class_type": "SAEConcepts_LoadToyWorld", "inputs": {"weights": weights}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "red circle on plain background"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
        "4": ({"class_type": "SAEConcepts_ToyWorldEmptyLatent", "inputs": {"width": 48, "height": 48, "batch_size": 1}}
              if empty == "toy" else
              {"class_type": "EmptyLatentImage", "inputs": {"width": 192, "height": 192, "batch_size": 1}}),
        "5": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0],
                                                   "latent_image": ["4", 0], "seed": 3, "steps": steps, "cfg": 3.0,
                                                   "sampler_name": "ddim", "scheduler": "ddim_uniform", "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "toy_unsteered"}},
    }
    if steer is not None:
        g["10"] = {"class_type": "SAEConcepts_LoadSAE", "inputs": {"sae_name": TOY_SAE, "dictionary": TOY_DICT,
                                                                   "block_for_foreign": "from file"}}
        g["11"] = steer
        g["12"] = {**g["5"], "inputs": {**g["5"]["inputs"], "model": ["11", 0]}}
        g["13"] = {"class_type": "VAEDecode", "inputs": {"samples": ["12", 0], "vae": ["1", 2]}}
        g["14"] = {"class_type": "SaveImage", "inputs": {"images": ["13", 0], "filename_prefix": "toy_steered"}}
    return g


def images_of(srv, hist, api):
    return {n["inputs"]["filename_prefix"]: saved_image(srv, hist, nid)
            for nid, n in api.items() if n["class_type"] == "SaveImage"}


def test_toy_workflows_name_the_shipped_files_and_sampler(comfy):
    """The workflows (built by a standalone script) load the files the pack ships, at the sampler
    settings their steering settings were measured with (PAPER_SAMPLER, the paper tables')."""
    from sae_concepts.host.toyworld.sampling import PAPER_SAMPLER, SHIPPED_WEIGHTS
    from sae_concepts.nodes.toyworld_nodes import SHIPPED_SAE_DIR
    assert SHIPPED_WEIGHTS.name == SHIPPED_MODEL and SHIPPED_WEIGHTS.is_file()
    assert (SHIPPED_SAE_DIR / SHIPPED_SAE).is_file() and (SHIPPED_SAE_DIR / SHIPPED_DICT).is_file()
    assert toy_workflows.TOY_SAMPLER == tuple(PAPER_SAMPLER[k] for k in ("steps", "cfg", "sampler_name", "scheduler"))
    for w in TOY_WORKFLOWS:
        text = w.read_text()
        assert all(name in text for name in (SHIPPED_MODEL, SHIPPED_SAE, SHIPPED_DICT)), w.name


def test_toy_model_runs_with_core_nodes(toy_server):
    for empty in ("toy", "core"):
        api = graph(toy_server["toy_weights"], None, empty=empty)
        hist = run(toy_server, api)
        assert hist["status"]["status_str"] == "success", hist["status"]
        img = images_of(toy_server, hist, api)["toy_unsteered"]
        assert img.shape == (48, 48, 3), (empty, img.shape)


def test_vae_encode_decode_is_lossless_in_the_server(toy_server):
    api = graph(toy_server["toy_weights"], None)
    api["8"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["6", 0], "vae": ["1", 2]}}
    api["9"] = {"class_type": "VAEDecode", "inputs": {"samples": ["8", 0], "vae": ["1", 2]}}
    api["15"] = {"class_type": "SaveImage", "inputs": {"images": ["9", 0], "filename_prefix": "toy_roundtrip"}}
    hist = run(toy_server, api)
    assert hist["status"]["status_str"] == "success", hist["status"]
    imgs = images_of(toy_server, hist, api)
    assert np.abs(imgs["toy_roundtrip"] - imgs["toy_unsteered"]).max() <= 1


QUADRANT = {"class_type": "SAEConcepts_QuadrantMask", "inputs": {"quadrant": "top right", "width": 48, "height": 48}}
WINDOW = {"concept_ids": "0", "start_percent": 0.0, "end_percent": 1.0, "rows": "both", "mode": "paper", "block": "auto"}


@pytest.mark.parametrize("kind", ["spatial", "global", "suppress"])
def test_our_steer_nodes_change_the_toy_image(toy_server, kind):
    if kind == "spatial":
        steer = {"class_type": "SAEConcepts_SpatialConceptSteer",
                 "inputs": {"model": ["1", 0], "sae": ["10", 0], "concept": "red circle", "mask": ["20", 0],
                            "beta": 4000.0, **WINDOW}}
    else:
        steer = {"class_type": "SAEConcepts_GlobalStyleSteer",
                 "inputs": {"model": ["1", 0], "sae": ["10", 0], "concept": "striped",
                            "beta": 1000.0 if kind == "global" else -1000.0, **WINDOW}}
    api = graph(toy_server["toy_weights"], steer)
    api["20"] = QUADRANT
    hist = run(toy_server, api)
    assert hist["status"]["status_str"] == "success", hist["status"]
    imgs = images_of(toy_server, hist, api)
    assert np.abs(imgs["toy_steered"] - imgs["toy_unsteered"]).max() >= 1, "steering did not change the image"


def test_concept_map_preview_on_the_toy_model(toy_server):
    api = graph(toy_server["toy_weights"], None)
    api["10"] = {"class_type": "SAEConcepts_LoadSAE", "inputs": {"sae_name": TOY_SAE, "dictionary": TOY_DICT,
                                                                 "block_for_foreign": "from file"}}
    api["16"] = {"class_type": "SAEConcepts_ConceptMapPreview",
                 "inputs": {"model": ["1", 0], "sae": ["10", 0], "positive": ["2", 0], "negative": ["3", 0],
                            "latent_image": ["4", 0], "seed": 3, "steps": 4, "cfg": 3.0, "sampler_name": "ddim",
                            "scheduler": "ddim_uniform", "at_percent": 0.0, "block": "middle_block.1",
                            "concept": "red circle", "concept_ids": "0", "overlay": True, "top_n": 5, "live_preview": False}}
    hist = run(toy_server, api)
    assert hist["status"]["status_str"] == "success", hist["status"]
    assert hist["outputs"]["16"]["images"], "ConceptMapPreview showed no map"


def test_unknown_toy_word_is_refused_naming_the_vocabulary(toy_server):
    api = graph(toy_server["toy_weights"], None)
    api["2"]["inputs"]["text"] = "a purple dog"
    hist = run(toy_server, api)
    assert hist["status"]["status_str"] == "error"
    assert "unknown word" in json.dumps(hist["status"]["messages"])


@pytest.mark.parametrize("workflow", [w.name for w in TOY_WORKFLOWS])
def test_toy_workflow_runs_in_the_server(toy_server, workflow):
    """Every shipped Toy World workflow runs as saved (UI format converted through the server's own
    /object_info), steered differs from unsteered. With the shipped model and
    SAE_CONCEPTS_TOY_PICTURES=1 its outputs become workflows/<name>.jpg."""
    import os
    ui = json.loads((REPO / "workflows" / workflow).read_text())
    api = ui_to_api(ui, toy_server["object_info"])
    hist = run(toy_server, api)
    assert hist["status"]["status_str"] == "success", hist["status"]
    imgs = images_of(toy_server, hist, api)
    steered = {k: v for k, v in imgs.items() if k.endswith("_steered")}
    for k, v in steered.items():
        assert np.abs(v - imgs[k.replace("_steered", "_unsteered")]).max() >= 1, f"{k}: steering changed nothing"
    if os.environ.get("SAE_CONCEPTS_TOY_PICTURES") and shipped_toy_files():
        write_thumbnail(toy_server, ui, api, hist, REPO / "workflows" / workflow.replace(".json", ".jpg"))


STEER_TYPES = ("SAEConcepts_SpatialConceptSteer", "SAEConcepts_GlobalStyleSteer")
FAMILY = {"sdxl": "SDXL", "flux": "Flux"}


def steer_settings(api: dict, nid: str) -> str:
    """The steer nodes feeding node `nid`'s model, in graph order: what each does, with which settings."""
    out = []
    src = api[nid]["inputs"]["model"][0]
    while api[src]["class_type"] in STEER_TYPES:
        i = api[src]["inputs"]
        kind = "spatial" if api[src]["class_type"] == STEER_TYPES[0] else "global"
        out.append(f"{kind} '{i['concept']}' beta {i['beta']:g}, window {i['start_percent']:g}-{i['end_percent']:g}, "
                   f"rows {i['rows']}, mode {i['mode']}" + (f", {i['normalisation']}" if "normalisation" in i else ""))
        src = i["model"][0]
    return "; ".join(reversed(out))


def write_thumbnail(srv, ui: dict, api: dict, hist: dict, out: Path, caption: str = "") -> None:
    """workflows/<name>.jpg from the images a run of `api` (built from `ui`) showed: one panel per
    SaveImage / PreviewImage / ConceptMapPreview output, titled as in the workflow, with the prompt
    and the steering settings under it."""
    from toy_thumbnails import thumbnail
    titles = {str(n["id"]): n.get("title", n["type"]) for n in ui["nodes"]}
    prompt = next(n["inputs"]["text"] for n in api.values() if n["class_type"] == "CLIPTextEncode" and n["inputs"]["text"])
    feeds = {}   # image node -> the sampler (KSampler / ConceptMapPreview) it shows
    for nid, node in api.items():
        src = node["inputs"].get("images", [nid])[0]
        while api[src]["class_type"] in ("VAEDecode", "MaskToImage"):
            src = api[src]["inputs"].get("samples", api[src]["inputs"].get("mask"))[0]
        feeds[nid] = src
    saved = {node["inputs"]["images"][0] for node in api.values() if "images" in node["inputs"]}
    panels = []
    for nid, node in api.items():
        if node["class_type"] not in ("SaveImage", "PreviewImage", "SAEConcepts_ConceptMapPreview") or nid in saved:
            continue   # a concept map already saved by an image node is shown once, there
        sampler = api[feeds[nid]]
        i = sampler["inputs"]
        settings = f"'{prompt}', seed {i['seed']}, {i['steps']} {i['sampler_name']} steps, cfg {i['cfg']:g}"
        title = titles[nid]
        if sampler["class_type"] == "SAEConcepts_ConceptMapPreview":
            settings += f"; '{i['concept']}' at {i['block']}, at_percent {i['at_percent']:g}"
            if title.count("'") == 2:   # the workflow's word, e.g. "Where 'cat' is at t = 1.0"
                title = title.split("'")[0] + f"'{i['concept']}'" + title.split("'")[2]
        else:
            steer = steer_settings(api, feeds[nid])
            settings += f"; {steer}" if steer else ""
        panels.append((saved_image(srv, hist, nid).astype("uint8"), title, settings))
    thumbnail(panels, out, caption, lines=7)


@pytest.mark.parametrize("workflow", [w.name for w in MODEL_WORKFLOWS])
def test_model_workflow_runs_on_the_toy_world(toy_server, workflow):
    """Every SD1.5 / SDXL / Flux workflow runs in the server with the Toy World in place of its model
    (toy_workflows.on_toy_world: same nodes and steering settings), steered differs from unsteered.
    With SAE_CONCEPTS_TOY_PICTURES=1 and the shipped model its outputs become workflows/<name>.jpg,
    captioned as rendered on the Toy World."""
    import os
    ui = json.loads((REPO / "workflows" / workflow).read_text())
    api = toy_workflows.on_toy_world(ui_to_api(ui, toy_server["object_info"]), workflow[:-5])
    hist = run(toy_server, api)
    assert hist["status"]["status_str"] == "success", hist["status"]
    imgs = images_of(toy_server, hist, api)
    for k, v in imgs.items():
        if k.endswith("_steered"):
            assert np.abs(v - imgs[k.replace("_steered", "_unsteered")]).max() >= 1, f"{k}: steering changed nothing"
    if os.environ.get("SAE_CONCEPTS_TOY_PICTURES") and shipped_toy_files():
        family = FAMILY.get(workflow.split("_")[0], "SD1.5")
        write_thumbnail(toy_server, ui, api, hist, REPO / "workflows" / workflow.replace(".json", ".jpg"),
                        caption=f"{workflow}: same graph on the Toy World model (48 px, trained here; toy prompt, "
                                f"SAE set, words and sampler); your {family} checkpoint gives real images. "
                                + toy_workflows.ON_TOY[workflow[:-5]]["note"])
