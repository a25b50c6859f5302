"""Flux.1 in process (host tier): a tiny Flux built from ComfyUI's own classes (hidden 64, 2 double +
2 single blocks, 2x2 patches, ModelSamplingFlux), patched through patches_replace["dit"]."""
from __future__ import annotations

import pytest
import torch

from sae_concepts.sae_core import SAEEntry, SAEInfo, SAESet, SaeConfig, TopKSAE
from dit_checks import (Recorder, concept_map_preview_matches_the_token_grid, random_sae,
                        steer_chains_with_skip_layer_guidance, window_steps_under_shift)

HIDDEN = 64
LATENT_H, LATENT_W = 12, 10          # token grid 6 x 5
GRID_H, GRID_W = 6, 5


@pytest.fixture(scope="module")
def flux(comfy):
    from random_models import build_random_flux
    return build_random_flux(seed=0)


def conditioning(text="a dog", **extra):
    from random_models import flux_conditioning
    c = flux_conditioning(text)
    c[0][1].update(extra)
    return c


def sample(model, steps=3, cfg=1.0, seed=0, sampler="euler", scheduler="simple", positive=None, negative=None,
           h=LATENT_H, w=LATENT_W):
    import comfy.sample
    noise = torch.randn(1, 16, h, w, generator=torch.Generator().manual_seed(seed))
    positive = positive or conditioning("a dog")
    negative = negative or conditioning("")
    return comfy.sample.sample(model, noise, steps, cfg, sampler, scheduler, positive, negative,
                               torch.zeros_like(noise), disable_pbar=True, seed=seed)


def flux_sae(block="double_blocks.1", d=HIDDEN, n=128, k=8, seed=0, t=None, cond="both", quantity="delta"):
    return random_sae("flux", block, d, n, k, seed, t, cond, quantity)


# ---- registry and blocks ------------------------------------------------------------------
def test_flux_is_recognised_and_its_blocks_resolve(flux):
    from sae_concepts.host.model_blocks import model_family, resolve_block, transformer_blocks
    assert model_family(flux) == "flux"
    assert transformer_blocks(flux) == {"double_blocks.0": HIDDEN, "double_blocks.1": HIDDEN,
                                        "single_blocks.0": HIDDEN, "single_blocks.1": HIDDEN}
    assert resolve_block(flux, "transformer.single_transformer_blocks.1") == "single_blocks.1"
    assert resolve_block(flux, "transformer_blocks.0") == "double_blocks.0"
    with pytest.raises(ValueError, match=r"this flux model has no transformer block 'double_blocks.18'; it has "
                                         r"double_blocks.0-1 and single_blocks.0-1 \(width 64\)"):
        resolve_block(flux, "double_blocks.18")
    with pytest.raises(ValueError, match="no transformer block 'middle_block.1'"):
        resolve_block(flux, "middle_block.1")


# ---- capture --------------------------------------------------------------------------------
def test_capture_is_exact_image_tokens_only_and_safe_from_in_place_updates(flux):
    """Delta recorded through the dit patch equals an independent computation from torch forward
    hooks on the block modules (input copied before the block, which works in place), for image
    tokens only: text tokens and Kontext reference tokens are excluded. cfg 3.5: cond and uncond apart."""
    from sae_concepts.host.block_patch import patch_block
    dm = flux.model.diffusion_model
    refs = {"double_blocks.1": [], "single_blocks.0": []}
    n_img = GRID_H * GRID_W
    txt_len = conditioning()[0][0].shape[1]

    def pre(name):
        def hook(module, args, kwargs):
            x = kwargs["img"] if "img" in kwargs else args[0]
            refs[name].append([x.detach().clone()])
        return hook

    def post(name):
        def hook(module, args, kwargs, output):
            out = output[0] if isinstance(output, tuple) else output
            refs[name][-1].append(out.detach().clone())
        return hook
    handles = []
    for name, mod in (("double_blocks.1", dm.double_blocks[1]), ("single_blocks.0", dm.single_blocks[0])):
        handles.append(mod.register_forward_pre_hook(pre(name), with_kwargs=True))
        handles.append(mod.register_forward_hook(post(name), with_kwargs=True))
    rec_d, rec_s, rec_out = Recorder(), Recorder(), Recorder()
    m = patch_block(flux, "double_blocks.1", rec_d)
    m = patch_block(m, "single_blocks.0", rec_s)
    m = patch_block(m, "single_blocks.0", rec_out, quantity="output")
    ref_latent = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(3))   # Kontext reference
    try:
        sample(m, steps=2, cfg=3.5, positive=conditioning("a dog", reference_latents=[ref_latent]),
               negative=conditioning("", reference_latents=[ref_latent]))
    finally:
        for h in handles:
            h.remove()
    assert len(rec_d.calls) == 2 and sorted(rec_d.calls[0][2]) == ["cond", "uncond"]   # one batched call per step
    for (grid, _, _), (x_in, x_out) in zip(rec_d.calls, refs["double_blocks.1"]):
        assert x_in.shape[1] == n_img + 16, "the reference tokens follow the image tokens"
        expected = (x_out[:, :n_img] - x_in[:, :n_img]).transpose(1, 2).reshape(2, HIDDEN, GRID_H, GRID_W)
        torch.testing.assert_close(grid, expected, rtol=0, atol=0)
        assert grid.abs().sum() > 0
    for (grid, _, _), (g_out, _, _), (x_in, x_out) in zip(rec_s.calls, rec_out.calls, refs["single_blocks.0"]):
        img = slice(txt_len, txt_len + n_img)   # single stream: cat(txt, img, reference)
        expected = (x_out[:, img] - x_in[:, img]).transpose(1, 2).reshape(2, HIDDEN, GRID_H, GRID_W)
        torch.testing.assert_close(grid, expected, rtol=0, atol=0)
        torch.testing.assert_close(g_out, x_out[:, img].transpose(1, 2).reshape(2, HIDDEN, GRID_H, GRID_W),
                                   rtol=0, atol=0)
    # A model without our patches gives the same image: recording changes nothing.
    assert torch.equal(sample(m), sample(flux))


def test_token_grid_mapping_steer_one_token_changes_only_its_patch(flux):
    """A change at token (r, c) of the last single block reaches only latent pixels
    [2r:2r+2, 2c:2c+2] (per-token final layer, then unpatchify)."""
    from sae_concepts.host.block_patch import patch_block
    from sae_concepts.sae_core.families import get_family
    r, c = 2, 3

    def bump(grid, call):
        change = torch.zeros_like(grid)
        change[:, :, r, c] = 3.0 * torch.linspace(-1, 1, grid.shape[1])
        return change
    base = sample(flux, steps=1)
    steered = sample(patch_block(flux, "single_blocks.1", bump), steps=1)
    changed = (steered - base).abs().sum(dim=(0, 1)) > 0
    rows, cols = get_family("flux").token_patch(r * GRID_W + c, GRID_W)
    expected = torch.zeros(LATENT_H, LATENT_W, dtype=torch.bool)
    expected[rows, cols] = True
    assert torch.equal(changed, expected)


def test_window_follows_the_schedule_and_ignores_a_later_shift(flux):
    from comfy_extras.nodes_model_advanced import ModelSamplingFlux
    window_steps_under_shift(flux, SAESet([flux_sae("double_blocks.1")]), "double_blocks.1", sample,
                             lambda m: ModelSamplingFlux().patch(m, 3.0, 0.5, 256, 256)[0])


def test_our_patch_wraps_an_existing_dit_patch_and_chains_with_skip_layer_guidance(flux):
    from sae_concepts.host.block_patch import patch_block
    seen = []

    def theirs(args, extra):   # an earlier dit patch on the same key: adds 1 to every image token
        seen.append(1)
        out = extra["original_block"](args)
        return {"img": out["img"] + 1.0, "txt": out["txt"]}
    m = flux.clone()
    m.set_model_patch_replace(theirs, "dit", "double_block", 1)
    rec = Recorder()
    ours = patch_block(m, "double_blocks.1", rec)
    torch.testing.assert_close(sample(ours), sample(m))
    assert seen and len(rec.calls) == 3
    only_ours = Recorder()
    sample(patch_block(flux, "double_blocks.1", only_ours))
    # Delta includes their +1: ours ran after theirs, theirs was not dropped.
    torch.testing.assert_close(rec.calls[0][0] - only_ours.calls[0][0], torch.ones_like(rec.calls[0][0]))
    # SkipLayerGuidanceDiT then our steer on the same block: both act.
    steer_chains_with_skip_layer_guidance(flux, SAESet([flux_sae("double_blocks.1")]), "double_blocks.1", "1", sample)


# ---- steering -------------------------------------------------------------------------------
def test_activation_addition_is_strength_times_mean_norm_times_unit_centred_direction(flux):
    from sae_concepts.host.block_patch import patch_block
    from sae_concepts.nodes.spatial_concept_steer import SpatialConceptSteer
    entry = flux_sae("single_blocks.0", quantity="output")
    s = SAESet([entry])
    mask = torch.zeros(1, LATENT_H * 8, LATENT_W * 8)
    mask[:, 16:48, 32:80] = 1.0          # tokens rows 1-2, cols 2-4 (16 px per token)
    below, above = Recorder(), Recorder()
    m = patch_block(flux, "single_blocks.0", below, quantity="output")
    m = SpatialConceptSteer.execute(m, s, "3, 9", mask, 0.8, "auto", 0.0, 1.0, "both",
                                    mode="activation_addition").result[0]
    m = patch_block(m, "single_blocks.0", above, quantity="output")
    sample(m, steps=2)
    grid0, grid1 = below.calls[0][0][0], above.calls[0][0][0]
    direction = entry.sae.W_dec[3] + entry.sae.W_dec[9]
    direction = direction - direction.mean()
    unit = direction / direction.norm()
    scale = grid0.reshape(HIDDEN, -1).norm(dim=0).mean()
    region = torch.zeros(GRID_H, GRID_W)
    region[1:3, 2:5] = 1.0
    expected = region[None] * 0.8 * scale * unit[:, None, None]
    torch.testing.assert_close(grid1 - grid0, expected, rtol=1e-4, atol=1e-5)
    assert abs(float(expected.sum(0).sum())) < 1e-3, "centred: no component along all-ones"


def test_paper_steers_run_on_flux_and_are_mean_centred(flux):
    from sae_concepts.host.block_patch import patch_block
    from sae_concepts.nodes.global_style_steer import GlobalStyleSteer
    from sae_concepts.nodes.spatial_concept_steer import SpatialConceptSteer
    s = SAESet([flux_sae("double_blocks.0", t=1.0), flux_sae("double_blocks.0", t=0.0, seed=1)])
    below, above = Recorder(), Recorder()
    m = patch_block(flux, "double_blocks.0", below)
    m = GlobalStyleSteer.execute(m, s, "4", 100.0, "auto", 0.0, 1.0, "both").result[0]
    m = patch_block(m, "double_blocks.0", above)
    out = sample(m)
    change = above.calls[0][0] - below.calls[0][0]
    assert change.abs().max() > 0 and change.mean(dim=1).abs().max() < 1e-5
    assert not torch.allclose(out, sample(flux))
    mask = torch.zeros(1, 96, 80)
    mask[:, :48] = 1
    spatial = SpatialConceptSteer.execute(flux, s, "4", mask, 400.0, "double_blocks.0", 0.0, 0.5, "cond").result[0]
    assert not torch.allclose(sample(spatial), sample(flux))


def test_concept_map_preview_on_the_token_grid(flux):
    concept_map_preview_matches_the_token_grid(flux, flux_sae("double_blocks.1"), conditioning("a dog"),
                                               conditioning(""), (LATENT_H, LATENT_W), HIDDEN, (GRID_H, GRID_W))


# ---- bad input ------------------------------------------------------------------------------
def test_family_and_block_mismatches_are_clear_errors(flux, tiny_model):
    from sae_concepts.nodes.global_style_steer import GlobalStyleSteer
    sd1 = SAESet([SAEEntry(TopKSAE(SaeConfig(d_in=128, n_latents=256, k=4)), SAEInfo(block="middle_block.1"))])
    with pytest.raises(ValueError, match="trained on an sd1 model, but this model is flux"):
        GlobalStyleSteer.execute(flux, sd1, "1", 10.0, "auto", 0.0, 1.0, "both")
    with pytest.raises(ValueError, match="trained on an flux model, but this model is sd1"):
        GlobalStyleSteer.execute(tiny_model, SAESet([flux_sae()]), "1", 10.0, "auto", 0.0, 1.0, "both")
    with pytest.raises(ValueError, match=r"SAE double_blocks.18 \(transformer_blocks.18\), any t, both: this flux "
                                         r"model has no transformer block 'double_blocks.18'; it has double_blocks.0-1"):
        GlobalStyleSteer.execute(flux, SAESet([flux_sae("double_blocks.18")]), "1", 10.0, "auto", 0.0, 1.0, "both")
    with pytest.raises(ValueError, match="has d=3072, but block double_blocks.1 of this model has 64 channels"):
        GlobalStyleSteer.execute(flux, SAESet([flux_sae(d=3072)]), "1", 10.0, "auto", 0.0, 1.0, "both")
    with pytest.raises(ValueError, match="unknown Flux.1 transformer block 'input_blocks.8.1'"):
        SAEInfo(model_family="flux", block="input_blocks.8.1")
