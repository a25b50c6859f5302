"""Flux in a real headless ComfyUI server: the shipped Flux workflow is converted and validated
with its real loaders, then run end to end with two TEST-ONLY nodes (tests/host_support/
flux_test_nodes: a tiny random Flux and random conditioning) in place of the loaders, a random
taef1 as VAE, and our nodes mapping and steering."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from sae_concepts.sae_core import SAEEntry, SAEInfo, SaeConfig, TopKSAE, save_sae_set

sys.path.insert(0, str(Path(__file__).parent / "host_support"))
from comfy_server import comfy_server  # noqa: E402
from workflow_convert import ui_to_api  # noqa: E402
from test_host_server import post, run, saved_image  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
WORKFLOW = REPO / "workflows" / "flux_activation_addition.json"
SAE_FILE = "flux_double18_sae_set.safetensors"


def write_models(base: Path) -> None:
    from comfy.taesd.taesd import TAESD
    from safetensors.torch import save_file
    sae_dir = base / "models" / "sae"
    sae_dir.mkdir(parents=True)
    sae = TopKSAE(SaeConfig(d_in=64, n_latents=256, k=8))
    sae.reset_parameters(torch.Generator().manual_seed(0))
    # The tiny Flux has 2 double blocks: the shipped name, an SAE for double_blocks.1 inside.
    save_sae_set(sae_dir / SAE_FILE, [SAEEntry(sae, SAEInfo(model_family="flux", block="double_blocks.1"))])
    sd1 = TopKSAE(SaeConfig(d_in=64, n_latents=256, k=8))
    save_sae_set(sae_dir / "sd15_sae.safetensors", [SAEEntry(sd1, SAEInfo(block="middle_block.1"))])
    save_sae_set(sae_dir / "flux_double18_real.safetensors",
                 [SAEEntry(sae, SAEInfo(model_family="flux", block="double_blocks.18"))])
    approx = base / "models" / "vae_approx"
    approx.mkdir(parents=True)
    from sae_concepts.host.random_checkpoint import reset_torch_layers
    tae = TAESD(latent_channels=16)   # random weights (ComfyUI's ops leave them uninitialised): a stand-in for taef1
    reset_torch_layers(tae, 0)
    for part in ("encoder", "decoder"):
        save_file({k: v.contiguous() for k, v in getattr(tae, f"taesd_{part}").state_dict().items()},
                  str(approx / f"taef1_{part}.safetensors"))


@pytest.fixture(scope="module")
def server(comfy, tmp_path_factory):
    from conftest import PLACEHOLDER, _torchvision_works
    base = tmp_path_factory.mktemp("comfy_flux")
    write_models(base)
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / "sae_concepts_flux_test_only").symlink_to(Path(__file__).parent / "host_support"
                                                                        / "flux_test_nodes")
    frontend = base / "frontend"
    frontend.mkdir()
    (frontend / "index.html").write_text("<html>headless test</html>")
    with comfy_server(comfy, base, frontend, None if _torchvision_works() else PLACEHOLDER) as srv:
        yield srv


def tiny(api: dict, sae_name: str = SAE_FILE) -> dict:
    """The shipped graph with the test-only model and conditioning in place of the real loaders."""
    out = {}
    for nid, node in api.items():
        ct, ins = node["class_type"], dict(node["inputs"])
        if ct == "DualCLIPLoader":
            continue
        if ct == "UNETLoader":
            node = {"class_type": "SAEConceptsTest_TinyFlux", "inputs": {"seed": 0}}
        elif ct == "CLIPTextEncode":
            node = {"class_type": "SAEConceptsTest_RandomFluxConditioning", "inputs": {"text": ins["text"]}}
        else:
            if ct == "VAELoader":
                ins["vae_name"] = "taef1"
            if ct == "EmptySD3LatentImage":
                ins.update(width=128, height=96)
            if ct == "KSampler":
                ins["steps"] = 4
            if ct == "SAEConcepts_LoadSAE":
                ins["sae_name"] = sae_name
            if ct == "SAEConcepts_SpatialConceptSteer":
                ins["concept_ids"] = "3, 7"
                ins["beta"] = 4.0
            node = {"class_type": ct, "inputs": ins}
        out[nid] = node
    return out


def test_shipped_flux_workflow_validates_and_only_lacks_its_model_files(server):
    ui = json.loads(WORKFLOW.read_text())
    api = ui_to_api(ui, server["object_info"])
    types = {n["class_type"] for n in api.values()}
    assert {"UNETLoader", "DualCLIPLoader", "VAELoader", "FluxGuidance"} <= types
    ks = [n for n in api.values() if n["class_type"] == "KSampler"]
    assert all(n["inputs"]["cfg"] == 1.0 for n in ks)
    steer = next(n for n in api.values() if n["class_type"] == "SAEConcepts_SpatialConceptSteer")["inputs"]
    assert (steer["mode"], steer["rows"], steer["block"]) == ("activation_addition", "cond", "auto")
    status, body = post(server["url"] + "/prompt", {"prompt": api})
    failing = {body["node_errors"][k]["class_type"] for k in body.get("node_errors", {})}
    assert failing <= {"UNETLoader", "DualCLIPLoader", "VAELoader", "SAEConcepts_LoadSAE"}, body
    assert "SAEConceptsTest" not in json.dumps(api), "the shipped workflow uses real loaders only"


def test_flux_workflow_runs_end_to_end_and_steering_changes_the_image(server):
    api = tiny(ui_to_api(json.loads(WORKFLOW.read_text()), server["object_info"]))
    hist = run(server, api, timeout=300)
    assert hist["status"]["status_str"] == "success", hist["status"]
    saves = {n["inputs"]["filename_prefix"]: saved_image(server, hist, nid)
             for nid, n in api.items() if n["class_type"] == "SaveImage"}
    steered, unsteered = saves["sae_concepts/flux_steered"], saves["sae_concepts/flux_unsteered"]
    assert steered.shape == unsteered.shape == (96, 128, 3) and abs(steered - unsteered).max() >= 1
    # The concept map on the same model: a map at the token grid's resolution, upsampled.
    ui = json.loads(WORKFLOW.read_text())
    api = tiny(ui_to_api(ui, server["object_info"]))
    load = next(k for k, n in api.items() if n["class_type"] == "SAEConcepts_LoadSAE")
    model = next(k for k, n in api.items() if n["class_type"] == "SAEConceptsTest_TinyFlux")
    guide = next(k for k, n in api.items() if n["class_type"] == "FluxGuidance")
    lat = next(k for k, n in api.items() if n["class_type"] == "EmptySD3LatentImage")
    cmap = {"class_type": "SAEConcepts_ConceptMapPreview",
            "inputs": {"model": [model, 0], "sae": [load, 0], "positive": [guide, 0], "negative": [guide, 0],
                       "latent_image": [lat, 0], "seed": 0, "steps": 4, "cfg": 1.0, "sampler_name": "euler",
                       "scheduler": "simple", "at_percent": 0.0, "block": "auto", "overlay": True, "top_n": 5,
                       "concept": "(none)", "concept_ids": "", "live_preview": True}}
    graph = {k: v for k, v in api.items() if k in (load, model, guide, lat)
             or v["class_type"] in ("SAEConceptsTest_RandomFluxConditioning",)}
    graph["900"] = cmap
    hist = run(server, graph, timeout=300)
    assert hist["status"]["status_str"] == "success", hist["status"]
    assert hist["outputs"]["900"]["images"], "ConceptMapPreview showed no map"


@pytest.mark.parametrize("sae_name, message", [
    ("sd15_sae.safetensors", "trained on an sd1 model, but this model is flux"),
    ("flux_double18_real.safetensors", "this flux model has no transformer block 'double_blocks.18'; it has "
                                       "double_blocks.0-1 and single_blocks.0-1"),
])
def test_wrong_sae_for_the_model_fails_naming_both(server, sae_name, message):
    api = tiny(ui_to_api(json.loads(WORKFLOW.read_text()), server["object_info"]), sae_name=sae_name)
    hist = run(server, api, timeout=300)
    assert hist["status"]["status_str"] == "error"
    text = json.dumps(hist["status"]["messages"])
    assert message in text, text
