"""SD3 through ComfyUI's real loaders: a tiny random MMDiT written to a file (UNETLoader detects it
as SD3), a random CLIP-L (CLIPLoader, type sd3) and a random taesd3 (VAELoader). The collect CLI
reads the same files; a headless server runs LoadSAE, a steer node and ConceptMapPreview on them."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from sae_concepts.sae_core import SAEEntry, SAEInfo, SaeConfig, TopKSAE, load_sae, save_sae_set

sys.path.insert(0, str(Path(__file__).parent / "host_support"))
from comfy_server import comfy_server  # noqa: E402
from test_host_server import run, saved_image  # noqa: E402

UNET, CLIP_L, SAE_FILE = "tiny_sd3.safetensors", "clip_l_random.safetensors", "sd3_joint1.safetensors"


@pytest.fixture(scope="module")
def base(comfy, tmp_path_factory):
    """A ComfyUI base directory with the random SD3 parts and SAEs in its model folders."""
    from random_models import write_random_clip_l, write_random_taesd, write_tiny_sd3
    base = tmp_path_factory.mktemp("comfy_sd3")
    models = base / "models"
    for sub in ("diffusion_models", "text_encoders", "vae_approx", "sae"):
        (models / sub).mkdir(parents=True)
    write_tiny_sd3(models / "diffusion_models" / UNET)
    write_random_clip_l(models / "text_encoders" / CLIP_L)
    write_random_taesd(models / "vae_approx", "taesd3", latent_channels=16)
    sae = TopKSAE(SaeConfig(d_in=128, n_latents=256, k=8))
    sae.reset_parameters(torch.Generator().manual_seed(0))
    save_sae_set(models / "sae" / SAE_FILE, [SAEEntry(sae, SAEInfo(model_family="sd3", block="joint_blocks.1"))])
    save_sae_set(models / "sae" / "sd15_sae.safetensors",
                 [SAEEntry(TopKSAE(SaeConfig(d_in=128, n_latents=256, k=8)), SAEInfo(block="middle_block.1"))])
    save_sae_set(models / "sae" / "sd35_large_joint20.safetensors",
                 [SAEEntry(sae, SAEInfo(model_family="sd3", block="joint_blocks.20"))])
    return base


def test_collect_cli_reads_the_sd3_files_and_its_shards_train_an_sd3_sae(base, tmp_path):
    """`sae-concepts collect --diffusion-model ... --text-encoders ...` on the tiny SD3 (in process),
    then `train`: the SAE file says sd3 / joint_blocks.1, and steers the model it came from."""
    from sae_concepts.training.cli import main
    from sae_concepts.training.storage.shards import ShardSet, activation_key
    models = base / "models"
    (tmp_path / "p.txt").write_text("a dog\na cat\na red car\n")
    assert main(["collect", "--diffusion-model", str(models / "diffusion_models" / UNET),
                 "--text-encoders", str(models / "text_encoders" / CLIP_L), "--prompts", str(tmp_path / "p.txt"),
                 "--out", str(tmp_path / "acts"), "--blocks", "transformer_blocks.1", "--steps", "3", "--cfg", "1.0",
                 "--sampler", "euler", "--scheduler", "simple", "--width", "64", "--height", "48",
                 "--timesteps", "1.0,0.0", "--quiet"]) == 0
    s = ShardSet.open(tmp_path / "acts")
    assert s.config["model_family"] == "sd3"
    assert s.shards[0]["blocks_diffusers"] == {"joint_blocks.1": "transformer_blocks.1"}
    assert s.shards[0]["grids"] == {"joint_blocks.1": [3, 4]} and s.shards[0]["channels"] == {"joint_blocks.1": 128}
    assert s.vectors(activation_key("joint_blocks.1", 1.0, "cond")) == 3 * 12
    assert main(["train", "--shards", str(tmp_path / "acts"), "--out", str(tmp_path / "sd3.safetensors"),
                 "--expansion-factor", "2", "--k", "4", "--batch-size", "16", "--quiet"]) == 0
    info = load_sae(tmp_path / "sd3.safetensors").select("transformer_blocks.1", 1.0, "cond").info
    assert (info.model_family, info.block, info.block_diffusers) == ("sd3", "joint_blocks.1", "transformer_blocks.1")


@pytest.fixture(scope="module")
def server(comfy, base):
    from conftest import PLACEHOLDER, _torchvision_works
    frontend = base / "frontend"
    frontend.mkdir()
    (frontend / "index.html").write_text("<html>headless test</html>")
    with comfy_server(comfy, base, frontend, None if _torchvision_works() else PLACEHOLDER) as srv:
        yield srv


def graph(sae_name: str = SAE_FILE) -> dict:
    """UNETLoader + CLIPLoader(sd3) + taesd3 -> LoadSAE -> GlobalStyleSteer -> KSampler (steered and
    not, same seed) -> VAEDecode -> SaveImage, and ConceptMapPreview on the same inputs."""
    def sampler(model, prefix, nid):
        return {f"{nid}": {"class_type": "KSampler", "inputs": {
                    "model": model, "seed": 3, "steps": 4, "cfg": 4.0, "sampler_name": "euler", "scheduler": "simple",
                    "positive": ["4", 0], "negative": ["5", 0], "latent_image": ["6", 0], "denoise": 1.0}},
                f"{nid + 1}": {"class_type": "VAEDecode", "inputs": {"samples": [f"{nid}", 0], "vae": ["3", 0]}},
                f"{nid + 2}": {"class_type": "SaveImage", "inputs": {"images": [f"{nid + 1}", 0],
                                                                     "filename_prefix": prefix}}}
    g = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": UNET, "weight_dtype": "default"}},
        "2": {"class_type": "CLIPLoader", "inputs": {"clip_name": CLIP_L, "type": "sd3", "device": "default"}},
        "3": {"class_type": "VAELoader", "inputs": {"vae_name": "taesd3"}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 0], "text": "a dog on a beach"}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 0], "text": ""}},
        "6": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 128, "height": 96, "batch_size": 1}},
        "7": {"class_type": "SAEConcepts_LoadSAE", "inputs": {"sae_name": sae_name, "dictionary": "none",
                                                              "block_for_foreign": "from file"}},
        "8": {"class_type": "SAEConcepts_GlobalStyleSteer", "inputs": {
            "model": ["1", 0], "sae": ["7", 0], "concept": "(concept ids)", "concept_ids": "3, 7", "beta": 2.0,
            "block": "auto", "start_percent": 0.0, "end_percent": 1.0, "rows": "cond",
            "mode": "activation_addition"}},
        "30": {"class_type": "SAEConcepts_ConceptMapPreview", "inputs": {
            "model": ["1", 0], "sae": ["7", 0], "positive": ["4", 0], "negative": ["5", 0], "latent_image": ["6", 0],
            "seed": 3, "steps": 4, "cfg": 4.0, "sampler_name": "euler", "scheduler": "simple", "at_percent": 0.5,
            "block": "joint_blocks.1", "overlay": True, "top_n": 5, "concept": "(none)", "concept_ids": "",
            "live_preview": True}},
    }
    g.update(sampler(["8", 0], "sae_concepts/sd3_steered", 10))
    g.update(sampler(["1", 0], "sae_concepts/sd3_unsteered", 20))
    return g


def test_real_loaders_steer_and_concept_map_on_sd3(server):
    hist = run(server, graph(), timeout=300)
    assert hist["status"]["status_str"] == "success", hist["status"]
    steered = saved_image(server, hist, "12")
    unsteered = saved_image(server, hist, "22")
    assert steered.shape == unsteered.shape == (96, 128, 3) and abs(steered - unsteered).max() >= 1
    assert hist["outputs"]["30"]["images"], "ConceptMapPreview showed no map"
    assert "Requested to load SD3\n" in server["log"].read_text()   # UNETLoader's own detection: an SD3 model


@pytest.mark.parametrize("sae_name, message", [
    ("sd15_sae.safetensors", "trained on an sd1 model, but this model is sd3"),
    ("sd35_large_joint20.safetensors", "this sd3 model has no transformer block 'joint_blocks.20'; it has "
                                       "joint_blocks.0-1 (width 128)"),
])
def test_wrong_sae_for_the_model_fails_naming_both(server, sae_name, message):
    g = {k: v for k, v in graph(sae_name).items() if k in {"1", "2", "4", "5", "6", "7", "8", "10", "11", "12", "3"}}
    hist = run(server, g, timeout=300)
    assert hist["status"]["status_str"] == "error"
    text = json.dumps(hist["status"]["messages"])
    assert message in text, text
