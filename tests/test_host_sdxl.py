"""SDXL: block mapping from ComfyUI's config, SDLens SAEs and SDLens-style steering, family checks,
and collect/train on an SDXL U-Net (reduced width, SDXL's block layout; one full-size shape check)."""
from __future__ import annotations

import json

import pytest
import torch

from sae_concepts.sae_core import SAEEntry, SAEInfo, SAESet, SaeConfig, TopKSAE, TrainConfig, load_sae

SDLENS = {"down_blocks.2.attentions.1": "input_blocks.8.1", "mid_block.attentions.0": "middle_block.1",
          "up_blocks.0.attentions.0": "output_blocks.0.1", "up_blocks.0.attentions.1": "output_blocks.1.1"}


@pytest.fixture(scope="module")
def sdxl(comfy):
    from random_models import build_random_sdxl
    return build_random_sdxl(tiny=True, seed=0)


def write_sdlens(folder, d, n=512, k=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    folder.mkdir(parents=True)
    dec = torch.randn(d, n, generator=g)
    dec /= dec.norm(dim=0, keepdim=True)
    state = {"encoder.weight": dec.t().clone(), "decoder.weight": dec, "pre_bias": torch.zeros(d),
             "latent_bias": torch.zeros(n), "stats_last_nonzero": torch.zeros(n, dtype=torch.long)}
    json.dump({"n_dirs_local": n, "d_model": d, "k": k, "auxk": 256, "dead_steps_threshold": 2000},
              open(folder / "config.json", "w"))
    torch.save({"state_dict": state}, folder / "state_dict.pth")
    torch.save(torch.rand(n, generator=g) + 0.5, folder / "mean.pt")
    torch.save(torch.rand(n, generator=g), folder / "std.pt")


def sample(model, steps=2, cfg=1.0, seed=0):
    import comfy.sample
    g = torch.Generator().manual_seed(seed)
    cond = [[torch.randn(1, 77, 2048, generator=g), {"pooled_output": torch.randn(1, 1280, generator=g)}]]
    noise = torch.randn(1, 4, 16, 16, generator=g)
    return comfy.sample.sample(model, noise, steps, cfg, "euler_ancestral", "normal", cond, cond,
                               torch.zeros_like(noise), disable_pbar=True, seed=seed)


def test_full_size_sdxl_blocks_resolve_through_comfy_config(comfy):
    from sae_concepts.host.model_blocks import diffusers_to_comfy, model_family, resolve_block, transformer_blocks
    from random_models import build_random_sdxl
    full = build_random_sdxl(tiny=False, device="meta")
    assert model_family(full) == "sdxl"
    mapping = diffusers_to_comfy(full)
    assert {d: mapping[d] for d in SDLENS} == SDLENS
    channels = transformer_blocks(full)
    assert all(channels[c] == 1280 for c in SDLENS.values())
    assert resolve_block(full, "unet.up_blocks.0.attentions.1") == "output_blocks.1.1"
    with pytest.raises(ValueError, match="this sdxl model has no transformer block 'up_blocks.3.attentions.0'"):
        resolve_block(full, "up_blocks.3.attentions.0")


def test_sdlens_sae_steers_sdxl_sdlens_style(sdxl, tmp_path):
    from sae_concepts.host.block_patch import patch_block
    from sae_concepts.nodes.spatial_concept_steer import SpatialConceptSteer
    from sae_concepts.nodes.steering import resize_mask
    write_sdlens(tmp_path / "sdlens", d=128)
    s = load_sae(tmp_path / "sdlens", info=SAEInfo(model_family="sdxl", block_diffusers="up_blocks.0.attentions.1"))
    entry = s.entries[0]
    assert entry.latent_mean is not None and entry.info.source_format == "sdlens"
    mask = torch.zeros(1, 128, 128)
    mask[:, 10:70, 30:128] = 1
    rec_below, rec_above = [], []
    m = patch_block(sdxl, "output_blocks.1.1", lambda d, c: rec_below.append((d.clone(), c.row_kinds)) or None)
    m = SpatialConceptSteer.execute(m, s, "3, 9", mask, 10.0, "auto", 0.0, 1.0, "cond", mode="sdlens").result[0]
    m = patch_block(m, "output_blocks.1.1", lambda d, c: rec_above.append(d.clone()) or None)
    out = sample(m)
    assert len(rec_below) == 2 and rec_below[0][1] == ["cond"], "cfg 1: only the cond half exists"
    (d0, _), d1 = rec_below[0], rec_above[0]
    _, C, H, W = d0.shape
    region = resize_mask(mask, H, W)[0].reshape(-1)
    direction = sum(entry.latent_mean[c] * entry.sae.W_dec[c] for c in (3, 9))
    expected = region[:, None] * 10.0 * direction
    torch.testing.assert_close((d1 - d0)[0].reshape(C, H * W).t(), expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(out, sample(sdxl))
    # The paper's adaptive steering works on SDXL as well.
    paper = SpatialConceptSteer.execute(sdxl, s, "3", mask, 400.0, "up_blocks.0.attentions.1", 0.0, 1.0,
                                        "both", mode="paper").result[0]
    assert not torch.allclose(sample(paper), sample(sdxl))


def test_model_family_mismatch_is_refused(sdxl, tiny_model, tmp_path):
    from sae_concepts.nodes.global_style_steer import GlobalStyleSteer
    sd1 = SAESet([SAEEntry(TopKSAE(SaeConfig(d_in=128, n_latents=256, k=4)), SAEInfo(block="middle_block.1"))])
    with pytest.raises(ValueError, match="trained on an sd1 model, but this model is sdxl"):
        GlobalStyleSteer.execute(sdxl, sd1, "1", 10.0, "auto", 0.0, 1.0, "both")
    write_sdlens(tmp_path / "x", d=128)
    xl = load_sae(tmp_path / "x", info=SAEInfo(model_family="sdxl", block_diffusers="mid_block.attentions.0"))
    with pytest.raises(ValueError, match="trained on an sdxl model, but this model is sd1"):
        GlobalStyleSteer.execute(tiny_model, xl, "1", 10.0, "auto", 0.0, 1.0, "both")
    no_stats = SAESet([SAEEntry(xl.entries[0].sae, xl.entries[0].info)])
    with pytest.raises(ValueError, match="mode 'sdlens' scales by each feature's mean activation"):
        GlobalStyleSteer.execute(sdxl, no_stats, "1", 10.0, "auto", 0.0, 1.0, "both", mode="sdlens")


def test_collect_and_train_on_sdxl(sdxl, tmp_path):
    from sae_concepts.nodes.global_style_steer import GlobalStyleSteer
    from sae_concepts.training.collect.collect import CollectConfig, collect
    from random_models import build_random_sdxl_clip
    from sae_concepts.training.storage.shards import ShardSet
    from sae_concepts.training.train.train import TrainCommandConfig, train_saes
    (tmp_path / "p.txt").write_text("a dog\na cat on a sofa\n")
    cfg = CollectConfig(prompts=str(tmp_path / "p.txt"), out=str(tmp_path / "acts"), steps=2, cfg=1.0,
                        sampler="euler_ancestral", scheduler="normal", width=128, height=128, timesteps="1.0,0.0",
                        save_images=False)
    collect(cfg, sdxl, build_random_sdxl_clip(), None, progress=False)
    s = ShardSet.open(tmp_path / "acts")
    assert s.config["model_family"] == "sdxl"
    assert s.keys() == sorted(f"{c}|t={t}|cond" for c in SDLENS.values() for t in ("0", "1"))
    assert s.shards[0]["blocks_diffusers"] == {c: d for d, c in SDLENS.items()}
    entries = train_saes(TrainCommandConfig(shards=str(tmp_path / "acts"), out=str(tmp_path / "xl.safetensors"),
                                            only="output_blocks.1.1", expansion_factor=2, k=4, batch_size=32),
                         TrainConfig(lr=1e-3, checkpoint_every=0), progress=False)
    loaded = load_sae(tmp_path / "xl.safetensors")
    info = loaded.entries[0].info
    assert (info.model_family, info.block, info.block_diffusers) == ("sdxl", "output_blocks.1.1", "up_blocks.0.attentions.1")
    assert len(entries) == 2
    steered = GlobalStyleSteer.execute(sdxl, loaded, "5", 500.0, "auto", 0.0, 1.0, "cond").result[0]
    assert not torch.allclose(sample(steered), sample(sdxl))
