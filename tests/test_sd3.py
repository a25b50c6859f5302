"""SD3 / SD3.5 in process (host tier): a tiny MMDiT built from ComfyUI's own classes (depth 2:
hidden 128, 2 heads, 2 joint blocks, 2x2 patches, ModelSamplingSD3 shift 3), patched through
patches_replace["dit"][("double_block", i)] as the registry's sd3 family says."""
from __future__ import annotations

import pytest
import torch

from sae_concepts.sae_core import SAEEntry, SAEInfo, SAESet, SaeConfig, TopKSAE
from dit_checks import (Recorder, concept_map_preview_matches_the_token_grid, random_sae,
                        steer_chains_with_skip_layer_guidance, window_steps_under_shift)

HIDDEN = 128
LATENT_H, LATENT_W = 12, 10          # token grid 6 x 5
GRID_H, GRID_W = 6, 5


@pytest.fixture(scope="module")
def sd3(comfy):
    from random_models import build_random_sd3
    return build_random_sd3(seed=0)


def cond(text="a dog"):
    from random_models import sd3_conditioning
    return sd3_conditioning(text)


def sample(model, steps=3, cfg=1.0, seed=0, h=LATENT_H, w=LATENT_W):
    import comfy.sample
    noise = torch.randn(1, 16, h, w, generator=torch.Generator().manual_seed(seed))
    return comfy.sample.sample(model, noise, steps, cfg, "euler", "simple", cond("a dog"), cond(""),
                               torch.zeros_like(noise), disable_pbar=True, seed=seed)


def sd3_sae(block="joint_blocks.0", d=HIDDEN, n=256, k=8, seed=0, t=None, quantity="delta", family="sd3"):
    return random_sae(family, block, d, n, k, seed, t, quantity=quantity)


def test_sd3_is_recognised_and_its_joint_blocks_resolve(sd3):
    from sae_concepts.host.model_blocks import model_family, resolve_block, transformer_blocks
    from sae_concepts.sae_core.families import get_family, guess_family
    assert model_family(sd3) == "sd3"
    assert transformer_blocks(sd3) == {"joint_blocks.0": HIDDEN, "joint_blocks.1": HIDDEN}
    assert resolve_block(sd3, "transformer.transformer_blocks.1") == "joint_blocks.1"   # diffusers' name
    with pytest.raises(ValueError, match=r"this sd3 model has no transformer block 'joint_blocks.12'; it has "
                                         r"joint_blocks.0-1 \(width 128\)"):
        resolve_block(sd3, "joint_blocks.12")
    fam = get_family("sd3")
    assert fam.token_grid(LATENT_H + 1, LATENT_W) == (GRID_H + 1, GRID_W)   # padded to the patch size
    assert [fam.schedule_t(i, 5) for i in range(5)] == [1.0, 0.75, 0.5, 0.25, 0.0]
    # diffusers' transformer_blocks.<i> is both Flux's and SD3's: a file's width tells them apart.
    assert guess_family("transformer_blocks.3", 1536) is fam and guess_family("transformer_blocks.3", 3072).name == "flux"
    assert guess_family("joint_blocks.3") is fam


def test_capture_is_exact_and_recording_changes_nothing(sd3):
    """Delta (and output) recorded through the dit patch equal an independent computation from torch
    forward hooks on the joint blocks, at cfg 2 (cond and uncond rows), including the last block,
    whose text stream ComfyUI drops (pre_only: txt is None)."""
    from sae_concepts.host.block_patch import patch_block
    dm = sd3.model.diffusion_model
    refs = {0: [], 1: []}

    def pre(i):
        def hook(module, args, kwargs):
            refs[i].append([args[1].detach().clone()])     # JointBlock(context, x, c=...)
        return hook

    def post(i):
        def hook(module, args, kwargs, output):
            refs[i][-1].append(output[1].detach().clone())   # (context, x)
        return hook
    handles = [h for i in (0, 1) for h in (dm.joint_blocks[i].register_forward_pre_hook(pre(i), with_kwargs=True),
                                           dm.joint_blocks[i].register_forward_hook(post(i), with_kwargs=True))]
    rec0, rec1, out1 = Recorder(), Recorder(), Recorder()
    m = patch_block(sd3, "joint_blocks.0", rec0)
    m = patch_block(m, "transformer_blocks.1", rec1)
    m = patch_block(m, "joint_blocks.1", out1, quantity="output")
    try:
        sample(m, steps=2, cfg=2.0)
    finally:
        for h in handles:
            h.remove()
    assert len(rec0.calls) == 2 and sorted(rec0.calls[0][2]) == ["cond", "uncond"]
    assert len(refs[0]) == len(refs[1]) == 2

    def grid(t):
        return t.transpose(1, 2).reshape(2, HIDDEN, GRID_H, GRID_W)
    for (g, _, _), (x_in, x_out) in zip(rec0.calls, refs[0]):
        assert x_in.shape[1] == GRID_H * GRID_W, "SD3's image stream holds only image tokens"
        torch.testing.assert_close(g, grid(x_out - x_in), rtol=0, atol=0)
        assert g.abs().sum() > 0
    for (g, _, _), (o, _, _), (x_in, x_out) in zip(rec1.calls, out1.calls, refs[1]):
        torch.testing.assert_close(g, grid(x_out - x_in), rtol=0, atol=0)
        torch.testing.assert_close(o, grid(x_out), rtol=0, atol=0)
    assert torch.equal(sample(m), sample(sd3))


@pytest.mark.parametrize("block", ["joint_blocks.0", "joint_blocks.1"])
def test_steer_one_token_changes_only_its_patch(sd3, block):
    """The token -> latent mapping: a change at token (r, c) of the last block reaches only latent
    pixels [2r:2r+2, 2c:2c+2] (per-token final layer, then unpatchify). At an earlier block the
    later blocks' joint attention spreads it, but its own patch changes too."""
    from sae_concepts.host.block_patch import patch_block
    from sae_concepts.sae_core.families import get_family
    r, c = 2, 3

    def bump(grid, call):
        change = torch.zeros_like(grid)
        change[:, :, r, c] = 3.0 * torch.linspace(-1, 1, grid.shape[1])
        return change
    base = sample(sd3, steps=1)
    changed = (sample(patch_block(sd3, block, bump), steps=1) - base).abs().sum(dim=(0, 1)) > 0
    rows, cols = get_family("sd3").token_patch(r * GRID_W + c, GRID_W)
    expected = torch.zeros(LATENT_H, LATENT_W, dtype=torch.bool)
    expected[rows, cols] = True
    if block == "joint_blocks.1":
        assert torch.equal(changed, expected)
    else:
        assert changed[rows, cols].all() and changed.sum() > 4


def test_window_follows_the_schedule_and_ignores_a_later_shift(sd3):
    from comfy_extras.nodes_model_advanced import ModelSamplingSD3
    from sae_concepts.host.block_patch import StepClock
    window_steps_under_shift(sd3, SAESet([sd3_sae("joint_blocks.0")]), "joint_blocks.0", sample,
                             lambda m: ModelSamplingSD3().patch(m, 6.0)[0])
    import comfy.samplers
    sigmas = comfy.samplers.calculate_sigmas(sd3.get_model_object("model_sampling"), "simple", 4)
    assert StepClock(sd3).step_ts(sigmas) == pytest.approx([1.0, 2 / 3, 1 / 3, 0.0])


def test_activation_addition_is_centred_and_chains_with_skip_layer_guidance(sd3):
    from sae_concepts.host.block_patch import patch_block
    from sae_concepts.nodes.global_style_steer import GlobalStyleSteer
    entry = sd3_sae("joint_blocks.1", quantity="output")
    s = SAESet([entry])
    below, above = Recorder(), Recorder()
    m = patch_block(sd3, "joint_blocks.1", below, quantity="output")
    m = GlobalStyleSteer.execute(m, s, "3, 9", 0.8, "auto", 0.0, 1.0, "both", mode="activation_addition").result[0]
    m = patch_block(m, "joint_blocks.1", above, quantity="output")
    sample(m, steps=2)
    grid0, grid1 = below.calls[0][0][0], above.calls[0][0][0]
    direction = entry.sae.W_dec[3] + entry.sae.W_dec[9]
    direction = direction - direction.mean()
    scale = grid0.reshape(HIDDEN, -1).norm(dim=0).mean()
    expected = (0.8 * scale * direction / direction.norm())[:, None, None].expand(HIDDEN, GRID_H, GRID_W)
    torch.testing.assert_close(grid1 - grid0, expected, rtol=1e-4, atol=1e-5)
    # SkipLayerGuidanceDiT (made for SD3) on the same key, then our steer
    steer_chains_with_skip_layer_guidance(sd3, s, "joint_blocks.1", "1", sample)


def test_spatial_steer_at_the_last_block_changes_only_the_masked_patches(sd3):
    from sae_concepts.nodes.spatial_concept_steer import SpatialConceptSteer
    s = SAESet([sd3_sae("joint_blocks.1")])
    mask = torch.zeros(1, LATENT_H * 8, LATENT_W * 8)
    mask[:, :48] = 1.0                   # the top 6 latent rows = token rows 0-2
    m = SpatialConceptSteer.execute(sd3, s, "4", mask, 0.8, "auto", 0.0, 1.0, "both",
                                    mode="activation_addition").result[0]
    changed = (sample(m, steps=1) - sample(sd3, steps=1)).abs().sum(dim=(0, 1)) > 0
    assert changed[:6].any() and not changed[6:].any()


def test_concept_map_preview_on_the_token_grid(sd3):
    concept_map_preview_matches_the_token_grid(sd3, sd3_sae("joint_blocks.0"), cond("a dog"), cond(""),
                                               (LATENT_H, LATENT_W), HIDDEN, (GRID_H, GRID_W))


def test_sae_of_another_family_is_refused_naming_both(sd3, tiny_model):
    from sae_concepts.nodes.global_style_steer import GlobalStyleSteer
    sd1 = SAESet([SAEEntry(TopKSAE(SaeConfig(d_in=128, n_latents=256, k=4)), SAEInfo(block="middle_block.1"))])
    with pytest.raises(ValueError, match="trained on an sd1 model, but this model is sd3"):
        GlobalStyleSteer.execute(sd3, sd1, "1", 10.0, "auto", 0.0, 1.0, "both")
    with pytest.raises(ValueError, match="trained on an sd3 model, but this model is sd1"):
        GlobalStyleSteer.execute(tiny_model, SAESet([sd3_sae()]), "1", 10.0, "auto", 0.0, 1.0, "both")
    # Flux's double blocks share diffusers' name transformer_blocks.<i> with SD3's joint blocks.
    flux = SAESet([sd3_sae("double_blocks.1", family="flux")])
    with pytest.raises(ValueError, match="trained on an flux model, but this model is sd3"):
        GlobalStyleSteer.execute(sd3, flux, "1", 10.0, "auto", 0.0, 1.0, "both")
    with pytest.raises(ValueError, match="has d=1536, but block joint_blocks.0 of this model has 128 channels"):
        GlobalStyleSteer.execute(sd3, SAESet([sd3_sae(d=1536)]), "1", 10.0, "auto", 0.0, 1.0, "both")
    with pytest.raises(ValueError, match="unknown SD3/SD3.5 transformer block 'double_blocks.1'"):
        SAEInfo(model_family="sd3", block="double_blocks.1")
