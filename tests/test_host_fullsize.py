"""Full-size SD1.5 U-Net (random weights, ComfyUI's classes): the paper's three 1280-channel
blocks take d = 1280, n_f = 5120 SAEs end to end through a short sampling run.

The suite's one full-size in-process U-Net. It is built in bfloat16 (ComfyUI runs it natively in
that dtype): 1.6 GiB instead of 3.2 GiB, and its sampling steps take half the time on a CPU with
bf16 instructions. What is checked (block widths, SAEs accepted, steering changes the result,
the concept map's text) does not depend on the dtype; float32 and fp16/bf16 steering math are
checked on the tiny model in test_host_nodes.py."""
import torch

from sae_concepts.sae_core import PAPER_BLOCKS, SAEEntry, SAEInfo, SAESet, SaeConfig, TopKSAE


def test_paper_blocks_accept_full_size_saes(comfy):
    import comfy.sample
    from sae_concepts.host.model_blocks import transformer_blocks
    from sae_concepts.nodes.concept_map_preview import ConceptMapPreview
    from sae_concepts.nodes.global_style_steer import GlobalStyleSteer
    from sae_concepts.nodes.spatial_concept_steer import SpatialConceptSteer
    from random_models import build_random_sd1

    model = build_random_sd1(tiny=False, seed=0, dtype=torch.bfloat16)
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
