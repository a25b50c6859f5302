"""Foreign SAEs without hand work: SAELens's decoder-norm rescaling folded into the weights
(checked against SAELens's own TopKSAE), and the block read from a file's config or folder names."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from sae_concepts.sae_core import load_sae
from sae_concepts.sae_core.foreign_formats import infer_info

D, N, K = 16, 64, 4


def rand(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("apply_b_dec", [True, False])
def test_saelens_rescaled_file_matches_saelens_own_encode_decode(tmp_path, apply_b_dec):
    sae_lens = pytest.importorskip("sae_lens", reason="sae-lens (test extra) is not installed")
    from sae_lens.saes.topk_sae import TopKSAE as LensTopK, TopKSAEConfig
    ref = LensTopK(TopKSAEConfig(d_in=D, d_sae=N, k=K, rescale_acts_by_decoder_norm=True,
                                 apply_b_dec_to_input=apply_b_dec))
    with torch.no_grad():   # decoder rows of very different norms, so the rescaling changes the TopK choice
        ref.W_enc.copy_(rand(D, N, seed=1))
        ref.b_enc.copy_(rand(N, seed=2))
        ref.W_dec.copy_(rand(N, D, seed=3) * torch.linspace(0.05, 4.0, N)[:, None])
        ref.b_dec.copy_(rand(D, seed=4))
    ref.save_model(tmp_path / "lens")
    assert json.loads((tmp_path / "lens" / "cfg.json").read_text())["rescale_acts_by_decoder_norm"] is True
    ours = load_sae(tmp_path / "lens", info=None).entries[0].sae
    x = rand(200, D, seed=9) * 2
    with torch.no_grad():
        z_ref = ref.encode(x)
        code = ours.encode(x)
        z = ours.dense_code(code)
        # SAELens's code already carries the decoder norm (it scales the pre-activations), so the
        # folded SAE gives the same code, and the same reconstruction.
        torch.testing.assert_close(z, z_ref, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(ours.decode(code), ref.decode(z_ref), rtol=1e-5, atol=1e-4)
        unscaled = LensTopK(TopKSAEConfig(d_in=D, d_sae=N, k=K, apply_b_dec_to_input=apply_b_dec))
        unscaled.load_state_dict(ref.state_dict())
        assert not torch.equal((unscaled.encode(x) > 0), (z_ref > 0)), "rescaling must matter in this test"
    torch.testing.assert_close(ours.W_dec.norm(dim=1), torch.ones(N), rtol=1e-5, atol=1e-5)


def write_sdlens(folder):
    folder.mkdir(parents=True)
    state = {"encoder.weight": rand(N, 1280, seed=1), "decoder.weight": rand(1280, N, seed=2),
             "pre_bias": rand(1280, seed=3), "latent_bias": rand(N, seed=4)}
    json.dump({"n_dirs_local": N, "d_model": 1280, "k": K}, open(folder / "config.json", "w"))
    torch.save({"state_dict": state}, folder / "state_dict.pth")


def test_sdlens_block_from_its_own_folder_layout(tmp_path):
    # sdxl-unbox's layout: checkpoints/<block>_k10_hidden5120_auxk256_bs4096_lr0.0001/final/
    folder = tmp_path / "unet.up_blocks.0.attentions.1_k10_hidden5120_auxk256_bs4096_lr0.0001" / "final"
    write_sdlens(folder)
    info = load_sae(folder).entries[0].info
    assert (info.model_family, info.block_diffusers, info.block) == ("sdxl", "up_blocks.0.attentions.1",
                                                                      "output_blocks.1.1")
    # A block name SD1.x and SDXL share: SDLens SAEs are SDXL's.
    write_sdlens(tmp_path / "mid_block.attentions.0_k10" / "final")
    assert load_sae(tmp_path / "mid_block.attentions.0_k10" / "final").entries[0].info.model_family == "sdxl"
    # No block anywhere: nothing is guessed.
    write_sdlens(tmp_path / "my_sae")
    info = load_sae(tmp_path / "my_sae").entries[0].info
    assert not (info.block or info.block_diffusers)


def test_saelens_block_from_hook_name_and_family_from_model_name(tmp_path):
    assert infer_info(tmp_path / "x", {"metadata": {"hook_name": "unet.mid_block.attentions.0",
                                                    "model_name": "runwayml/stable-diffusion-v1-5"}}, 1280) \
        .model_family == "sd1"
    info = infer_info(tmp_path / "x", {"hook_name": "unet.down_blocks.2.attentions.1",
                                       "model_name": "stabilityai/sdxl-turbo"}, 1280)
    assert (info.model_family, info.block) == ("sdxl", "input_blocks.8.1")
    # Names SD1.x and SDXL share, without a family hint: ambiguous, so left to the user.
    assert infer_info(tmp_path / "x", {"hook_name": "unet.mid_block.attentions.0"}, 1280) is None
    assert infer_info(tmp_path / "sae_for_blocks.8", {}, 1280) is None
