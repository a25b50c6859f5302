"""A real ComfyUI server, headless on loopback, running every shipped workflow end to end; and,
before it starts, the other two tests that need the full-size SD1.5 (the `collect` command on the
checkpoint, the paper's blocks with full-size SAEs in this process): the one file that holds it."""
from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

from sae_concepts.sae_core import PAPER_BLOCKS, SAEEntry, SAEInfo, SAESet, SaeConfig, TopKSAE, save_sae_set
from sae_concepts.sae_core.concept_dictionary import ConceptDictionary, SAEConcepts
from sae_concepts.training.storage.shards import ShardSet, activation_key

sys.path.insert(0, str(Path(__file__).parent / "host_support"))
from comfy_server import comfy_server, get  # noqa: E402
from workflow_convert import ui_to_api  # noqa: E402

# The one file with full-size SD1.5 (one `collect` run and one in-process U-Net, then the server):
# under `pytest -n 2 --dist loadfile` a file runs in one process, so two never load it at once.
pytestmark = pytest.mark.full_size_sd15

REPO = Path(__file__).resolve().parent.parent
WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
# SDXL needs an SDXL checkpoint; the Toy World ones run in tests/test_host_toyworld.py
SD15_WORKFLOWS = [w for w in WORKFLOWS if not w.name.startswith(("sdxl", "toyworld", "flux"))]   # flux: test_flux_server.py
CHECKPOINT = "v1-5-pruned-emaonly.safetensors"
OUR_NODES = ("SAEConcepts_LoadSAE", "SAEConcepts_SpatialConceptSteer", "SAEConcepts_GlobalStyleSteer",
             "SAEConcepts_ConceptMapPreview")


def post(url, data):
    req = urllib.request.Request(url, data=json.dumps(data).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def write_models(base: Path, checkpoint: Path) -> None:
    (base / "models" / "checkpoints").mkdir(parents=True)
    (base / "models" / "checkpoints" / CHECKPOINT).symlink_to(checkpoint)
    sae_dir = base / "models" / "sae"
    sae_dir.mkdir(parents=True)
    entries = []
    for i, block in enumerate(PAPER_BLOCKS):
        sae = TopKSAE(SaeConfig(d_in=1280, n_latents=5120, k=10))
        sae.reset_parameters(torch.Generator().manual_seed(i))
        entries.append(SAEEntry(sae, SAEInfo(block=block, t=None, cond="both")))
    save_sae_set(sae_dir / "sd15_paper_sae_set.safetensors", entries)
    labels = {"dog": [17, 40], "horse": [99], "cat": [5, 6]}
    ConceptDictionary([SAEConcepts(b, None, "both", {cid: {"labels": [w], "counts": {w: 1}}
                                                      for w, ids in labels.items() for cid in ids})
                       for b in PAPER_BLOCKS]).save(sae_dir / "sd15_paper_concept_dictionary.json")


@pytest.fixture(scope="module")
def server(comfy, tmp_path_factory):
    from conftest import PLACEHOLDER, _torchvision_works
    from sae_concepts.host.random_checkpoint import cached_random_sd1_checkpoint
    ckpt = cached_random_sd1_checkpoint()
    base = tmp_path_factory.mktemp("comfy_base")
    write_models(base, ckpt)
    frontend = base / "frontend"
    frontend.mkdir()
    (frontend / "index.html").write_text("<html>headless test</html>")
    # The checkpoint's U-Net is stored in fp8 and kept so (cast to float32 per layer as it runs, as ComfyUI
    # does for low-memory cards): ComfyUI's float32 default on a CPU would hold 5.2 GiB while loading.
    with comfy_server(comfy, base, frontend, None if _torchvision_works() else PLACEHOLDER,
                      extra_args=("--fp8_e4m3fn-unet",)) as srv:
        yield srv


# Sampling steps of every KSampler / ConceptMapPreview the tests run. Each full-size step costs ~3 s
# of CPU here, so as few as keep a step in every window the workflows steer in: with their
# ddim_uniform, 3 steps sample at sigma 2.93 / 0.94 / 0.04, one step in the early (0-0.4) and one
# in the middle window (0.4-0.8); 6 steps, the former setting, had 3 and 2.
STEPS = 3


def small(api: dict) -> dict:
    """Shrink sizes and steps so a random full-size SD1.5 runs in seconds on a CPU.

    The global steer's beta is spread over all positions (beta * ||z_ij|| / sum ||z||): at
    128 px the mid block has 4 positions and the paper's beta 10 moves this random model's
    image by less than one 8-bit level, so the test raises it to make "steered differs from
    unsteered" observable in the saved PNGs."""
    for node in api.values():
        ins = node["inputs"]
        if node["class_type"] == "EmptyLatentImage":
            ins.update(width=128, height=128)
        if node["class_type"] in ("KSampler", "SAEConcepts_ConceptMapPreview"):
            ins["steps"] = STEPS
        if node["class_type"] == "SAEConcepts_GlobalStyleSteer":
            ins["beta"] = ins["beta"] * 100
    return api


def run(server, api: dict, timeout=600) -> dict:
    status, body = post(server["url"] + "/prompt", {"prompt": api, "client_id": "sae-concepts-test"})
    assert status == 200, body
    pid = body["prompt_id"]
    deadline = time.time() + timeout
    while time.time() < deadline:
        hist = get(f"{server['url']}/history/{pid}")
        if pid in hist and hist[pid].get("status", {}).get("completed") is not None:
            return hist[pid]
        time.sleep(0.5)
    raise TimeoutError(f"prompt {pid} did not finish")


def saved_image(server, hist, node_id):
    from PIL import Image
    import numpy as np
    img = hist["outputs"][node_id]["images"][0]
    path = server["base"] / img["type"] / img["subfolder"] / img["filename"]
    return np.asarray(Image.open(path)).astype("int16")


def test_collect_command_on_the_full_size_checkpoint(tmp_path, comfy):
    """`sae-concepts collect` as a user runs it on a single-file SD1.5 checkpoint (ComfyUI's loader,
    full size, fp8 weights as stored): the family and weight dtype are recorded, the mid block's Δ has
    SD1.5's 1280 channels and is finite. One sampling step per prompt: each takes seconds here.
    First in this file, so it runs before the server starts: the checkpoint is loaded by one process
    at a time (`--weight-dtype fp8_e4m3fn` keeps the weights as stored: 2.9 GiB at peak, where
    ComfyUI's float32 default would hold 5.2 GiB)."""
    from sae_concepts.host.random_checkpoint import cached_random_sd1_checkpoint
    from test_host_collect import PROMPTS, cli_args, small_cfg, subprocess_env
    random_checkpoint = cached_random_sd1_checkpoint()
    (tmp_path / "two.txt").write_text("\n".join(PROMPTS[:2]) + "\n")
    cfg = small_cfg(tmp_path, prompts=str(tmp_path / "two.txt"), blocks="middle_block.1", timesteps="1.0",
                    steps=1, prompts_per_shard=1, save_images=False, weight_dtype="fp8_e4m3fn")
    r = subprocess.run([sys.executable, "-m", "sae_concepts.training.cli"] + cli_args(cfg, random_checkpoint),
                       env=subprocess_env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    s = ShardSet.open(cfg.out)
    assert s.config["model_family"] == "sd1" and s.config["weight_dtype"] == "fp8_e4m3fn"
    assert [sh["prompt_ids"] for sh in s.shards] == [[0], [1]]
    assert s.keys() == sorted(activation_key("middle_block.1", 1.0, c) for c in ("cond", "uncond"))
    for sh in s.shards:
        for key in s.keys():
            acts = s.read(sh, key)["acts"]
            assert acts.shape == (4, 1280), "SD1.5's mid block: 1280 channels, 2x2 positions at 128 px"
            assert torch.isfinite(acts.float()).all(), (sh["file"], key)


def test_paper_blocks_accept_full_size_saes(comfy):
    """Full-size SD1.5 U-Net (random weights, ComfyUI's classes), in this process: the paper's three
    1280-channel blocks take d = 1280, n_f = 5120 SAEs end to end through a short sampling run.
    Built in bfloat16 (ComfyUI runs it natively in that dtype): 1.6 GiB instead of 3.2 GiB, and its
    steps take half the time on a CPU with bf16 instructions. What is checked (block widths, SAEs
    accepted, steering changes the result, the concept map's text) does not depend on the dtype;
    float32 and fp16/bf16 steering math are checked on the tiny model in test_host_nodes.py. Before
    the server starts, and the model is let go of at the end, so this process is small again while
    the server holds the checkpoint."""
    import comfy.sample
    from sae_concepts.host.model_blocks import transformer_blocks
    from sae_concepts.nodes.concept_map_preview import ConceptMapPreview
    from sae_concepts.nodes.global_style_steer import GlobalStyleSteer
    from sae_concepts.nodes.spatial_concept_steer import SpatialConceptSteer
    from conftest import release_models
    from random_models import build_random_sd1

    model = build_random_sd1(tiny=False, seed=0, dtype=torch.bfloat16)
    try:
        assert [transformer_blocks(model)[b] for b in PAPER_BLOCKS] == [1280, 1280, 1280]
        entries = []
        for i, block in enumerate(PAPER_BLOCKS):
            sae = TopKSAE(SaeConfig(d_in=1280, n_latents=5120, k=10))
            sae.reset_parameters(torch.Generator().manual_seed(i))
            for t in (1.0, 0.5, 0.0):
                entries.append(SAEEntry(sae.eval().requires_grad_(False), SAEInfo(block=block, t=t, cond="cond")))
        s = SAESet(entries)
        mask = torch.zeros(1, 128, 128)
        mask[:, :64, :64] = 1
        steered = SpatialConceptSteer.execute(model, s, "17", mask, 4000.0, "middle_block.1", 0.0, 0.4, "both").result[0]
        steered = SpatialConceptSteer.execute(steered, s, "5", mask, 1000.0, "output_blocks.3.1", 0.0, 1.0, "cond").result[0]
        steered = GlobalStyleSteer.execute(steered, s, "99", 10.0, "input_blocks.8.1", 0.0, 1.0, "both").result[0]
        g = torch.Generator().manual_seed(0)
        noise = torch.randn(1, 4, 16, 16, generator=g)
        pos = [[torch.randn(1, 77, 768, generator=g), {}]]
        neg = [[torch.zeros(1, 77, 768), {}]]
        lat = torch.zeros(1, 4, 16, 16)
        plain = comfy.sample.sample(model, noise, 2, 7.5, "ddim", "normal", pos, neg, lat, disable_pbar=True, seed=0)
        out = comfy.sample.sample(steered, noise, 2, 7.5, "ddim", "normal", pos, neg, lat, disable_pbar=True, seed=0)
        assert torch.isfinite(out).all() and not torch.allclose(out, plain)
        image, mask_out, text = ConceptMapPreview.execute(model, s, pos, neg, {"samples": lat}, 0, 2, 7.5, "ddim",
                                                          "normal", 0.0, "middle_block.1", True, 5, concept="17").result
        assert image.shape == (1, 128, 128, 3) and mask_out.shape == (1, 128, 128)
        assert "SAE middle_block.1 (mid_block.attentions.0), t=1, cond" in text
    finally:   # let go of the 1.6 GiB before the server starts, also when a check failed
        model = steered = s = entries = sae = None   # noqa: F841
        release_models()


def test_workflows_are_ui_format_and_use_only_core_and_our_nodes(server):
    assert len(WORKFLOWS) == 10
    for wf in WORKFLOWS:
        ui = json.loads(wf.read_text())
        assert {"nodes", "links", "last_node_id", "version"} <= set(ui)
        types = {n["type"] for n in ui["nodes"]}
        assert "Note" in types, f"{wf.name} has no note explaining its settings"
        for t in types - {"Note"}:
            assert t in server["object_info"], t
            module = server["object_info"][t]["python_module"]
            ours = t.startswith("SAEConcepts_") and module.startswith("custom_nodes.")   # the toy world's too
            assert ours or module in ("nodes", "comfy_extras") or module.startswith("comfy_extras"), (wf.name, t)


@pytest.mark.parametrize("workflow", [w.name for w in SD15_WORKFLOWS])
def test_workflow_runs_and_steering_changes_the_image(server, workflow):
    ui = json.loads((REPO / "workflows" / workflow).read_text())
    api = small(ui_to_api(ui, server["object_info"]))
    hist = run(server, api)
    assert hist["status"]["status_str"] == "success", hist["status"]
    saves = {nid: n for nid, n in api.items() if n["class_type"] == "SaveImage"}
    images = {n["inputs"]["filename_prefix"]: saved_image(server, hist, nid) for nid, n in saves.items()}
    steered = [v for k, v in images.items() if k.endswith("_steered")]
    unsteered = [v for k, v in images.items() if k.endswith("_unsteered")]
    for s, u in zip(steered, unsteered):
        assert s.shape == u.shape and abs(s - u).max() >= 1, "steered and unsteered images are the same"
    if workflow.startswith("concept_map"):
        cm = next(nid for nid, n in api.items() if n["class_type"] == "SAEConcepts_ConceptMapPreview")
        assert hist["outputs"][cm]["images"], "ConceptMapPreview showed no map"
    log = server["log"].read_text()
    ours = [line for line in log.splitlines() if any(n in line for n in OUR_NODES + ("sae_concepts",))
            and ("Error" in line or "Traceback" in line or "Exception" in line)]
    assert not ours, ours


def test_server_lists_workflows_as_templates(server):
    templates = get(server["url"] + "/workflow_templates")
    assert sorted(templates["sae_concepts"]) == sorted(w.stem for w in WORKFLOWS)
    served = get(f"{server['url']}/api/workflow_templates/sae_concepts/{WORKFLOWS[0].name}")
    assert served["nodes"]


def test_sdxl_turbo_workflow_converts_and_only_lacks_its_model_files(server):
    """No SDXL weights exist here (and a random full-size SDXL checkpoint is ~7 GB), so the Turbo
    graph is converted and validated by the server, not sampled: only its two missing files may fail."""
    ui = json.loads((REPO / "workflows" / "sdxl_turbo_sdlens_paint.json").read_text())
    api = ui_to_api(ui, server["object_info"])
    ks = [n for n in api.values() if n["class_type"] == "KSampler"]
    assert all(n["inputs"]["steps"] == 1 and n["inputs"]["cfg"] == 1.0 for n in ks)
    steer = next(n for n in api.values() if n["class_type"] == "SAEConcepts_SpatialConceptSteer")["inputs"]
    assert (steer["mode"], steer["rows"], steer["block"]) == ("sdlens", "cond", "auto")
    status, body = post(server["url"] + "/prompt", {"prompt": api})
    failing = {body["node_errors"][k]["class_type"] for k in body.get("node_errors", {})}
    assert failing <= {"CheckpointLoaderSimple", "SAEConcepts_LoadSAE"}, body


def test_validation_errors_name_our_node_and_server_keeps_serving(server):
    ui = json.loads((REPO / "workflows" / "composition_spatial_steer.json").read_text())
    api = small(ui_to_api(ui, server["object_info"]))
    # ComfyUI queues the branches that are valid and reports the rest: without the unsteered branch
    # every output depends on the broken node, so nothing is sampled (that branch ran in the test above).
    api = {k: n for k, n in api.items()
           if not (n["class_type"] == "SaveImage" and n["inputs"]["filename_prefix"].endswith("_unsteered"))}
    load_id = next(k for k, n in api.items() if n["class_type"] == "SAEConcepts_LoadSAE")
    missing = json.loads(json.dumps(api))
    missing[load_id]["inputs"]["sae_name"] = "missing_file.safetensors"
    status, body = post(server["url"] + "/prompt", {"prompt": missing})
    assert status == 400 and load_id in body["node_errors"], body
    assert body["node_errors"][load_id]["class_type"] == "SAEConcepts_LoadSAE"
    assert "missing_file.safetensors" in json.dumps(body["node_errors"][load_id])
    steer_id = next(k for k, n in api.items() if n["class_type"] == "SAEConcepts_SpatialConceptSteer")
    no_mask = json.loads(json.dumps(api))
    del no_mask[steer_id]["inputs"]["mask"]
    status, body = post(server["url"] + "/prompt", {"prompt": no_mask})
    assert status == 400 and steer_id in body["node_errors"], body
    assert body["node_errors"][steer_id]["class_type"] == "SAEConcepts_SpatialConceptSteer"
    assert "mask" in json.dumps(body["node_errors"][steer_id])
    typo = json.loads(json.dumps(api))
    typo[steer_id]["inputs"]["concept"] = "dgo"
    status, body = post(server["url"] + "/prompt", {"prompt": typo})
    assert status == 400 and steer_id in body["node_errors"], body
    assert "nearest labels: dog" in json.dumps(body["node_errors"][steer_id]), body["node_errors"][steer_id]
    assert get(server["url"] + "/object_info/SAEConcepts_LoadSAE")["SAEConcepts_LoadSAE"]["name"] == "SAEConcepts_LoadSAE"
    # Still serving: the next prompt runs (a cheap one: the steered graph itself ran in the
    # workflow tests, and sampling it again here would cost ~40 s of CPU).
    keep = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "still_serving"}}}
    hist = run(server, keep)
    assert hist["status"]["status_str"] == "success" and hist["outputs"]["2"]["images"]
