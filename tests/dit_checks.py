"""Checks shared by the DiT families' in-process tests (test_flux.py, test_sd3.py): each family's
file builds its tiny model, conditioning and sampler, and asks these the same questions."""
from __future__ import annotations

import torch

from sae_concepts.sae_core import SAEEntry, SAEInfo, SAESet, SaeConfig, TopKSAE


class Recorder:
    """A block-patch callback that records (Delta or output grid, sigmas, row kinds) per call."""

    def __init__(self):
        self.calls = []

    def __call__(self, grid, call):
        self.calls.append((grid.clone(), call.sigmas.clone(), list(call.row_kinds)))
        return None


def random_sae(family: str, block: str, d: int, n: int, k: int = 8, seed: int = 0, t=None, cond: str = "both",
               quantity: str = "delta") -> SAEEntry:
    g = torch.Generator().manual_seed(seed)
    sae = TopKSAE(SaeConfig(d_in=d, n_latents=n, k=k))
    sae.reset_parameters(g)
    return SAEEntry(sae.eval().requires_grad_(False),
                    SAEInfo(model_family=family, block=block, t=t, cond=cond, quantity=quantity))


def window_steps_under_shift(model, sae_set, block, sample, reshift) -> None:
    """start/end percent pick steps by their position in the run's own schedule: the same steps
    after the model's sampling shift is changed behind the steer (`reshift(model)`, which moves
    every sigma)."""
    from sae_concepts.host.block_patch import patch_block
    from sae_concepts.nodes.global_style_steer import GlobalStyleSteer

    def steered_steps(shifted):
        below, above = Recorder(), Recorder()
        m = patch_block(model, block, below)
        m = GlobalStyleSteer.execute(m, sae_set, "5", 50.0, block, 0.0, 0.4, "both",
                                     mode="activation_addition").result[0]
        m = patch_block(m, block, above)
        if shifted:
            m = reshift(m)
        sample(m, steps=6)
        sigmas = [float(b[1][0]) for b in below.calls]
        return [i for i, (b, a) in enumerate(zip(below.calls, above.calls)) if not torch.equal(b[0], a[0])], sigmas
    plain, sig_plain = steered_steps(False)
    shifted, sig_shift = steered_steps(True)
    assert plain == shifted == [0, 1, 2]          # step / 6 in [0, 0.4]
    assert sig_plain != sig_shift


def steer_chains_with_skip_layer_guidance(model, sae_set, block, layer: str, sample) -> None:
    """SkipLayerGuidanceDiT (on the same dit key) and then our steer: both act."""
    from comfy_extras.nodes_slg import SkipLayerGuidanceDiT
    from sae_concepts.nodes.global_style_steer import GlobalStyleSteer
    slg = SkipLayerGuidanceDiT.execute(model, 3.0, 0.0, 1.0, layer, "", 0.0).result[0]
    both = GlobalStyleSteer.execute(slg, sae_set, "5", 2.0, block, 0.0, 1.0, "both",
                                    mode="activation_addition").result[0]
    steer = GlobalStyleSteer.execute(model, sae_set, "5", 2.0, block, 0.0, 1.0, "both",
                                     mode="activation_addition").result[0]
    out_both, out_slg, out_steer = (sample(x, cfg=2.0) for x in (both, slg, steer))
    assert not torch.allclose(out_both, out_slg) and not torch.allclose(out_both, out_steer)


def concept_map_preview_matches_the_token_grid(model, entry, pos, neg, latent_hw, hidden, grid_hw) -> None:
    """Concept Map Preview's image at the first step equals the colour map of the block's top
    concepts, computed independently from a recorded Delta."""
    import comfy.sample
    from sae_concepts.host.block_patch import patch_block
    from sae_concepts.nodes.concept_map_preview import ConceptMapPreview
    from sae_concepts.sae_core.concept_render import colour_map
    from sae_concepts.sae_core.interventions import top_concepts
    (lh, lw), (gh, gw), block = latent_hw, grid_hw, entry.info.block
    latent = {"samples": torch.zeros(1, 16, lh, lw)}
    image, mask, text = ConceptMapPreview.execute(model, SAESet([entry]), pos, neg, latent, 0, 4, 1.0, "euler",
                                                  "simple", 0.0, "auto", False, 5, concept="4",
                                                  live_preview=False).result
    assert image.shape == (1, lh * 8, lw * 8, 3) and mask.shape == (1, lh * 8, lw * 8)
    assert f"{block}, step 1/4 (t = 1.0)" in text
    rec = Recorder()
    noise = comfy.sample.prepare_noise(latent["samples"], 0)
    comfy.sample.sample(patch_block(model, block, rec), noise, 4, 1.0, "euler", "simple", pos, neg,
                        latent["samples"], last_step=1, disable_pbar=True, seed=0)
    ids, strength = top_concepts(entry.sae, rec.calls[0][0][0].reshape(hidden, -1).t())
    expected = colour_map(ids.reshape(gh, gw), strength.reshape(gh, gw), (lh * 8, lw * 8))
    torch.testing.assert_close(image[0], expected)
