"""Nodes on a real ComfyUI (host tier): tiny random SD1.x U-Net, ComfyUI's own classes."""
from __future__ import annotations

import asyncio
import logging
import os

import pytest
import torch

from sae_concepts.sae_core import SAEEntry, SAEInfo, SAESet, SaeConfig, TopKSAE, save_sae_set
from sae_concepts.sae_core.concept_dictionary import ConceptDictionary, SAEConcepts
from sae_concepts.sae_core.reference import dense_topk_code

BLOCK = "middle_block.1"
TINY_CH = 128   # channels of the tiny model's 1280-channel blocks (model_channels 32 x 4)
STEPS = 4


def make_sae(d=TINY_CH, n=256, k=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    sae = TopKSAE(SaeConfig(d_in=d, n_latents=n, k=k))
    sae.reset_parameters(g)
    with torch.no_grad():
        sae.b_pre.copy_(torch.randn(d, generator=g) * 0.1)
        sae.input_scale.fill_(3.0)
    return sae.eval().requires_grad_(False)


def sae_set(block=BLOCK, d=TINY_CH, seed=0, dictionary=True):
    s = SAESet([SAEEntry(make_sae(d=d, seed=seed), SAEInfo(block=block, t=None, cond="both"))])
    if dictionary:
        s.dictionary = ConceptDictionary([SAEConcepts(block, None, "both", {
            3: {"labels": ["dog", "dog"], "counts": {"dog": 2}},
            7: {"labels": ["cat"], "counts": {"cat": 1}},
            11: {"labels": ["hot dog"], "counts": {"hot dog": 1}}})])
    return s


class Recorder:
    """BlockEdit that records (delta, sigmas, kinds) of every call and changes nothing."""
    def __init__(self):
        self.calls = []

    def __call__(self, delta, call):
        self.calls.append((delta.detach().clone(), call.sigmas.clone(), list(call.row_kinds)))
        return None


def sample(model, seed=0, size=32, steps=STEPS, cfg=7.5):
    import comfy.sample
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(1, 4, size, size, generator=g)
    pos = [[torch.randn(1, 77, 32, generator=g), {}]]
    neg = [[torch.randn(1, 77, 32, generator=g) * 0.1, {}]]
    return comfy.sample.sample(model, noise, steps, cfg, "ddim", "normal", pos, neg,
                               torch.zeros(1, 4, size, size), disable_pbar=True, seed=seed)


def out(node_output):
    return node_output.result if hasattr(node_output, "result") else node_output


def steer_spatial(model, s, concept="3, 7", mask=None, beta=50.0, start=0.0, end=0.5, rows="cond", block=BLOCK):
    from sae_concepts.nodes.spatial_concept_steer import SpatialConceptSteer
    if mask is None:
        mask = torch.zeros(1, 256, 256)
        mask[:, :, :128] = 1.0        # left half
    return out(SpatialConceptSteer.execute(model, s, concept, mask, beta, block, start, end, rows))[0]


def steer_global(model, s, concept="7", beta=30.0, start=0.0, end=1.0, rows="both", block=BLOCK):
    from sae_concepts.nodes.global_style_steer import GlobalStyleSteer
    return out(GlobalStyleSteer.execute(model, s, concept, beta, block, start, end, rows))[0]


def sandwich(model, steer, size=32):
    """Recorders below and above a steer on the same block: their Delta difference is the change."""
    from sae_concepts.host.block_patch import patch_block
    below, above = Recorder(), Recorder()
    m = steer(patch_block(model, BLOCK, below))
    m = patch_block(m, BLOCK, above)
    sample(m, size=size)
    assert len(below.calls) == len(above.calls) == STEPS
    return below, above


def window_sigmas(model, start, end):
    ms = model.get_model_object("model_sampling")
    return ms.percent_to_sigma(end), ms.percent_to_sigma(start)


def expected_spatial(sae, delta_rows, ids, region, beta):
    """The paper's spatial formula written densely and independently of sae_core.interventions."""
    Z = dense_topk_code(sae, delta_rows) * sae.input_scale
    f = sae.W_dec[ids] / sae.W_dec[ids].norm(dim=1, keepdim=True)
    inside = beta * Z.norm(dim=1, keepdim=True) * f.sum(0)
    outside = -(Z[:, ids] @ sae.W_dec[ids])
    return region[:, None] * inside + (1 - region[:, None]) * outside


def test_spatial_steer_matches_formula_in_window_and_rows(tiny_model):
    s = sae_set()
    sae = s.entries[0].sae
    below, above = sandwich(tiny_model, lambda m: steer_spatial(m, s, concept="3, 7", beta=50.0,
                                                                start=0.0, end=0.5, rows="cond"))
    lo, hi = window_sigmas(tiny_model, 0.0, 0.5)
    steered_calls = 0
    for (d0, sig, kinds), (d1, _, _) in zip(below.calls, above.calls):
        B, C, H, W = d0.shape
        region = torch.zeros(H, W)
        region[:, : W // 2] = 1.0
        for i in range(B):
            in_window = lo <= float(sig[i]) <= hi
            if in_window and kinds[i] == "cond":
                rows = d0[i].reshape(C, H * W).t()
                exp = expected_spatial(sae, rows, [3, 7], region.reshape(-1), 50.0)
                got = (d1[i] - d0[i]).reshape(C, H * W).t()
                torch.testing.assert_close(got, exp, rtol=1e-4, atol=1e-3)
                inside = region.reshape(-1) > 0
                assert got[inside].abs().max() > 1.0 and got[~inside].abs().sum() >= 0
                steered_calls += 1
            else:
                assert torch.equal(d1[i], d0[i]), f"row {i} ({kinds[i]}, sigma {float(sig[i]):.3f}) was changed"
    assert steered_calls == 2, "4 ddim steps, window 0-0.5: exactly the first two cond rows"


def test_global_steer_matches_formula_on_both_rows(tiny_model):
    s = sae_set()
    sae = s.entries[0].sae
    below, above = sandwich(tiny_model, lambda m: steer_global(m, s, concept="cat", beta=30.0, start=0.5, end=1.0))
    lo, hi = window_sigmas(tiny_model, 0.5, 1.0)
    n = 0
    for (d0, sig, kinds), (d1, _, _) in zip(below.calls, above.calls):
        B, C, H, W = d0.shape
        for i in range(B):
            if lo <= float(sig[i]) <= hi:
                rows = d0[i].reshape(C, H * W).t()
                norm = (dense_topk_code(sae, rows) * sae.input_scale).norm(dim=1, keepdim=True)
                f = sae.W_dec[7] / sae.W_dec[7].norm()
                exp = 30.0 * norm / norm.sum() * f
                torch.testing.assert_close((d1[i] - d0[i]).reshape(C, H * W).t(), exp, rtol=1e-4, atol=1e-5)
                n += 1
            else:
                assert torch.equal(d1[i], d0[i])
    assert n == 4, "window 0.5-1 of 4 steps: 2 steps x (cond + uncond)"


def test_clones_are_isolated_and_patches_chain(tiny_model):
    s = sae_set()
    base = sample(tiny_model)
    assert torch.equal(sample(tiny_model.clone()), base), "a plain clone must be bit-identical"
    a = steer_global(tiny_model, s, concept="7", beta=200.0)
    ab = steer_spatial(a, s, concept="dog", beta=100.0, rows="both")
    out_a, out_ab = sample(a), sample(ab)
    assert not torch.allclose(out_a, base) and not torch.allclose(out_ab, out_a)
    only_b = sample(steer_spatial(tiny_model, s, concept="dog", beta=100.0, rows="both"))
    assert not torch.allclose(out_ab, only_b), "the chained model must apply both steers"
    # Running steered clones left nothing behind on the original.
    assert torch.equal(sample(tiny_model), base)
    from sae_concepts.host.block_patch import PatchedSpatialTransformer
    import comfy.utils
    assert not isinstance(comfy.utils.get_attr(tiny_model.model, "diffusion_model." + BLOCK),
                          PatchedSpatialTransformer)
    # Chaining composes: an additive edit patched twice with v equals once with 2 v.
    from sae_concepts.host.block_patch import patch_block
    bump = lambda v: (lambda d, c: torch.full_like(d, v))
    twice = sample(patch_block(patch_block(tiny_model, BLOCK, bump(0.01)), BLOCK, bump(0.01)))
    once = sample(patch_block(tiny_model, BLOCK, bump(0.02)))
    torch.testing.assert_close(twice, once, rtol=1e-3, atol=2e-3)  # outputs ~70: float rounding


def test_weight_patch_under_the_wrapper_still_applies(tiny_model):
    s = sae_set()
    key = f"diffusion_model.{BLOCK}.proj_out.weight"
    w = tiny_model.model.state_dict()[key]
    diff = torch.randn(w.shape, generator=torch.Generator().manual_seed(1)) * 0.05
    steered = steer_global(tiny_model, s, beta=100.0)
    steered_then_lora = steered.clone()
    steered_then_lora.add_patches({key: (diff,)}, 1.0)
    lora_then_steered_base = tiny_model.clone()
    lora_then_steered_base.add_patches({key: (diff,)}, 1.0)
    lora_then_steered = steer_global(lora_then_steered_base, s, beta=100.0)
    x1, x2, x0 = sample(steered_then_lora), sample(lora_then_steered), sample(steered)
    assert not torch.allclose(x1, x0), "the weight patch under the steer wrapper had no effect"
    torch.testing.assert_close(x1, x2)
    assert torch.equal(tiny_model.model.state_dict()[key], w), "weights were not restored"


def test_concept_map_preview_outputs(tiny_model):
    from sae_concepts.nodes.concept_map_preview import ConceptMapPreview
    s = sae_set()
    g = torch.Generator().manual_seed(0)
    pos = [[torch.randn(1, 77, 32, generator=g), {}]]
    neg = [[torch.randn(1, 77, 32, generator=g), {}]]
    latent = {"samples": torch.zeros(2, 4, 32, 32)}
    image, mask, text = out(ConceptMapPreview.execute(tiny_model, s, pos, neg, latent, 0, 10, 7.5, "ddim", "normal",
                                                      0.0, BLOCK, True, 5, concept="dog"))
    assert image.shape == (2, 256, 256, 3) and 0 <= image.min() and image.max() <= 1
    assert mask.shape == (2, 256, 256) and 0 <= mask.min() and mask.max() <= 1
    assert "step 1/10 (t = 1.0)" in text and text.count("concept ") >= 2
    # The map shows the first step: identical whatever the later steps would do.
    image2, _, _ = out(ConceptMapPreview.execute(tiny_model, s, pos, neg, latent, 0, 10, 7.5, "ddim", "normal",
                                                 0.0, BLOCK, False, 5))
    rec = Recorder()
    from sae_concepts.host.block_patch import patch_block
    from sae_concepts.sae_core.interventions import top_concepts
    import comfy.sample
    m = patch_block(tiny_model, BLOCK, rec)
    noise = comfy.sample.prepare_noise(latent["samples"], 0)
    comfy.sample.sample(m, noise, 10, 7.5, "ddim", "normal", pos, neg, latent["samples"], last_step=1,
                        disable_pbar=True, seed=0)
    d0, _, kinds = rec.calls[0]
    rows = d0[kinds.index("cond")].reshape(TINY_CH, -1).t()
    ids, strength = top_concepts(s.entries[0].sae, rows)
    from sae_concepts.sae_core.concept_render import colour_map
    expected = colour_map(ids.reshape(4, 4), strength.reshape(4, 4), (256, 256))
    torch.testing.assert_close(image2[0], expected)


# ---- bad input --------------------------------------------------------------------------
def test_bad_inputs_are_clear_errors_or_documented(tiny_model, caplog):
    s = sae_set()
    small = torch.zeros(7, 5)
    small[:, :2] = 1
    sample(steer_spatial(tiny_model, s, mask=small))            # other mask size: resized
    with caplog.at_level(logging.WARNING, logger="sae_concepts"):
        sample(steer_spatial(tiny_model, s, mask=torch.zeros(1, 64, 64)))
    assert "mask is empty" in caplog.text
    caplog.clear()   # removal everywhere on purpose (the toy paper's suppression): no warning
    from sae_concepts.nodes.steering import steer_model
    with caplog.at_level(logging.WARNING, logger="sae_concepts"):
        steer_model(tiny_model, s, BLOCK, "3, 7", "spatial", 0.0, 0.0, 1.0, "both", mask=torch.zeros(1, 64, 64))
    assert "mask is empty" not in caplog.text
    with pytest.raises(ValueError, match=r"no concept of block middle_block.1 is labelled \['zebra'\]"):
        steer_spatial(tiny_model, s, concept="zebra")
    with pytest.raises(ValueError, match="needs a concept dictionary"):
        steer_global(tiny_model, sae_set(dictionary=False), concept="dog")
    with pytest.raises(ValueError, match=r"has no SAE for block 'input_blocks.8.1'.*\['middle_block.1'\]"):
        steer_global(tiny_model, s, block="input_blocks.8.1")
    with pytest.raises(ValueError, match="has d=1280, but block middle_block.1 of this model has 128 channels"):
        steer_global(tiny_model, sae_set(d=1280, dictionary=False))
    with pytest.raises(ValueError, match="start_percent=0.7, end_percent=0.2"):
        steer_global(tiny_model, s, start=0.7, end=0.2)
    with pytest.raises(ValueError, match=r"out of range .* \(0..255\)"):
        steer_global(tiny_model, s, concept="3, 999")
    with pytest.raises(ValueError, match="concept is empty"):
        steer_global(tiny_model, s, concept=" , ")


def test_nan_activations_leave_rows_unsteered(tiny_model, caplog):
    from sae_concepts.host.block_patch import BlockCall
    from sae_concepts.nodes.steering import ConceptSteerEdit
    s = sae_set()
    edit = ConceptSteerEdit(tiny_model, BLOCK, s.entries, s, "7", "global", 10.0, 0.0, 1.0, "both")
    delta = torch.randn(2, TINY_CH, 4, 4)
    delta[1, 0, 0, 0] = float("nan")
    call = BlockCall(BLOCK, torch.tensor([14.0, 14.0]), ["cond", "uncond"], {"cond_or_uncond": [0, 1]})
    with caplog.at_level(logging.WARNING, logger="sae_concepts"):
        change = edit(delta, call)
    assert torch.isfinite(change).all() and change[0].abs().sum() > 0 and torch.equal(change[1], torch.zeros_like(change[1]))
    assert "NaN/Inf" in caplog.text


# ---- registration -----------------------------------------------------------------------
OUR_NODES = ("SAEConcepts_LoadSAE", "SAEConcepts_SpatialConceptSteer", "SAEConcepts_GlobalStyleSteer",
             "SAEConcepts_ConceptMapPreview")


@pytest.fixture(scope="module")
def registered(comfy, tmp_path_factory):
    """The pack loaded as ComfyUI loads custom nodes, with one SAE set and dictionary in models/sae."""
    import folder_paths
    import nodes
    tmp_path = tmp_path_factory.mktemp("plugin")
    plugin_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    link = tmp_path / "custom_nodes" / "sae_concepts"
    link.parent.mkdir()
    link.symlink_to(plugin_root)
    sae_dir = tmp_path / "models_sae"
    sae_dir.mkdir()
    save_sae_set(sae_dir / "demo.safetensors", sae_set().entries)
    sae_set().dictionary.save(sae_dir / "demo_dictionary.json")
    (sae_dir / "notes.json").write_text('{"not": "a dictionary"}')
    from sae_concepts.nodes import model_folders
    model_folders.register()
    folder_paths.add_model_folder_path("sae", str(sae_dir))
    folder_paths.add_model_folder_path("sae_dictionaries", str(sae_dir))
    ok = asyncio.run(nodes.load_custom_node(str(link), module_parent="custom_nodes"))
    assert ok is True
    return nodes.NODE_CLASS_MAPPINGS


def test_plugin_registers_prefixed_nodes_and_every_input_has_a_tooltip(registered):
    from sae_concepts.nodes import NODES
    ids = [cls.GET_SCHEMA().node_id for cls in NODES]
    assert set(OUR_NODES) <= set(ids) and all(i.startswith("SAEConcepts_") for i in ids), ids
    for node_id in ids:
        info = registered[node_id].GET_NODE_INFO_V1()
        assert info["name"] == node_id and info["category"] == "sae_concepts"
        assert not info["display_name"].startswith("SAEConcepts"), "display names stay readable"
        for section in ("required", "optional"):
            for name, spec in info["input"].get(section, {}).items():
                assert len(spec) > 1 and spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
        assert all(t for t in info["output_tooltips"]), f"{node_id} has an output without a tooltip"
    steer = registered["SAEConcepts_SpatialConceptSteer"].GET_NODE_INFO_V1()
    assert steer["input"]["required"]["sae"][0] == "SAE_CONCEPTS_SAE"
    assert registered["SAEConcepts_LoadSAE"].GET_NODE_INFO_V1()["output"] == ["SAE_CONCEPTS_SAE"]
    load = registered["SAEConcepts_LoadSAE"]
    info = load.GET_NODE_INFO_V1()
    options = lambda spec: spec[0] if isinstance(spec[0], list) else spec[1]["options"]
    assert "demo.safetensors" in options(info["input"]["required"]["sae_name"])
    assert "demo_dictionary.json" in options(info["input"]["required"]["dictionary"])
    loaded = out(load.execute("demo.safetensors", "demo_dictionary.json", "from file"))[0]
    assert loaded.blocks == [BLOCK] and loaded.dictionary.for_sae(BLOCK, None, "cond").lookup("dog") == [3, 11]


def test_concept_is_a_choice_of_dictionary_labels_and_unknown_words_name_the_nearest(registered, tiny_model):
    from sae_concepts.nodes.concept_choice import BY_ID, NO_CONCEPT
    for node_id in OUR_NODES[1:]:
        cls = registered[node_id]
        spec = cls.GET_NODE_INFO_V1()["input"]["required"]["concept"]
        opts = spec[1]["options"]
        assert {"dog", "cat", "hot dog", BY_ID} <= set(opts), opts
        # the first label of every dictionary listed (ours here, and the pack's shipped Toy World one)
        labels = [o for o in opts if o not in (BY_ID, NO_CONCEPT)]
        assert labels == sorted(labels) and "cat" in labels
        assert spec[1]["default"] == (NO_CONCEPT if node_id.endswith("Preview") else labels[0]), spec[1]["default"]
        assert cls.validate_inputs("dog") is True
        assert cls.validate_inputs(BY_ID, "12, 40") is True
        assert cls.validate_inputs("12") is True            # ids through the API
        msg = cls.validate_inputs("dgo")
        assert isinstance(msg, str) and "'dgo'" in msg and "nearest labels: dog" in msg, msg
        assert "hot dog" in cls.validate_inputs("hotdog")
        assert isinstance(cls.validate_inputs(BY_ID, " , "), str)
    steer = registered["SAEConcepts_GlobalStyleSteer"]
    a = sample(out(steer.execute(tiny_model, sae_set(), BY_ID, 30.0, BLOCK, 0.0, 1.0, "both",
                                 concept_ids="7"))[0])
    b = sample(out(steer.execute(tiny_model, sae_set(), "cat", 30.0, BLOCK, 0.0, 1.0, "both"))[0])
    torch.testing.assert_close(a, b)   # "cat" is concept 7



# ---- memory and precision -----------------------------------------------------------------
def test_sae_weights_are_loaded_by_comfyui_model_management(tiny_model):
    """The steered clone carries the SAE as an additional model, so ComfyUI's sampler loads it
    with the U-Net (counted in current_loaded_models) and the two steers on one SAE share it."""
    import comfy.model_management as mm
    from sae_concepts.nodes.sae_memory import ADDITIONAL_MODELS_KEY
    s = sae_set()
    steered = steer_global(steer_spatial(tiny_model, s, concept="dog"), s, concept="cat")
    attached = steered.get_additional_models_with_key(ADDITIONAL_MODELS_KEY)
    assert len(attached) == 1 and attached[0].model is s.entries[0].sae
    assert attached[0].load_device == tiny_model.load_device
    assert tiny_model.get_additional_models_with_key(ADDITIONAL_MODELS_KEY) == [], "the original is untouched"
    sample(steered)
    loaded = [lm.model for lm in mm.current_loaded_models if lm.model is not None]
    assert any(p.model is s.entries[0].sae for p in loaded), "the SAE was not loaded through load_models_gpu"
    assert attached[0].model_size() >= sum(t.numel() * 4 for t in (s.entries[0].sae.W_dec,))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_steering_in_half_precision_models_matches_float32_math(comfy, dtype):
    """fp16 / bf16 U-Net: Delta arrives in that dtype; the change must be the float32 formula on
    that Delta rounded once to the dtype, the sampled output must carry it (to the dtype's
    rounding of the block output), and beta * ||z|| beyond fp16's range is clamped instead of
    turning the image into NaN."""
    from random_models import build_random_sd1
    from sae_concepts.host.block_patch import BlockCall
    from sae_concepts.nodes.steering import ConceptSteerEdit
    model = build_random_sd1(tiny=True, seed=0, dtype=dtype)
    s = sae_set()
    sae = s.entries[0].sae
    # A 16x16 latent: fp16 convolutions have no fast CPU path (this test took 14 s at 32x32).
    below, above = sandwich(model, lambda m: steer_global(m, s, concept="7", beta=30.0, start=0.0, end=1.0), size=16)
    edit = ConceptSteerEdit(model, BLOCK, s.entries, s, "7", "global", 30.0, 0.0, 1.0, "both")
    eps = torch.finfo(dtype).eps
    for (d0, sig, kinds), (d1, _, _) in zip(below.calls, above.calls):
        assert d0.dtype == dtype
        B, C, H, W = d0.shape
        change = edit(d0, BlockCall(BLOCK, sig, kinds, {"cond_or_uncond": [0, 1]}))
        assert change.dtype == dtype, "the change must not double Delta's memory as float32"
        for i in range(B):
            rows = d0[i].reshape(C, H * W).t().float()
            norm = (dense_topk_code(sae, rows) * sae.input_scale).norm(dim=1, keepdim=True)
            exp = (30.0 * norm / norm.sum() * (sae.W_dec[7] / sae.W_dec[7].norm())).t().reshape(C, H, W)
            assert ((change[i].float() - exp).abs() <= eps * exp.abs() + 1e-7).all()
            # End to end the block output (input + Delta + change) is rounded to the dtype once more.
            torch.testing.assert_close(d1[i].float() - d0[i].float(), exp, rtol=0, atol=16 * eps)
    huge = sample(steer_spatial(model, s, concept="3, 7", beta=1e5, rows="both"), size=16)
    assert torch.isfinite(huge).all(), f"{dtype}: a large beta made the sample non-finite"


# ---- live concept map, SDLens rows, foreign blocks ------------------------------------------
def test_live_preview_sends_each_steps_concept_map(tiny_model):
    """With live_preview the progress hook receives, after every step, that step's concept map;
    the first equals the map the node outputs for at_percent = 0."""
    import comfy.utils
    from sae_concepts.nodes.concept_map_preview import ConceptMapPreview
    s = sae_set()
    g = torch.Generator().manual_seed(0)
    pos = [[torch.randn(1, 77, 32, generator=g), {}]]
    neg = [[torch.randn(1, 77, 32, generator=g), {}]]
    latent = {"samples": torch.zeros(1, 4, 32, 32)}
    frames = []
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: frames.append((value, total, preview)))
    try:
        out(ConceptMapPreview.execute(tiny_model, s, pos, neg, latent, 0, 4, 7.5, "ddim", "normal", 1.0, BLOCK,
                                      True, 5, live_preview=True))
        live = list(frames)
        frames.clear()
        first, _, _ = out(ConceptMapPreview.execute(tiny_model, s, pos, neg, latent, 0, 4, 7.5, "ddim", "normal",
                                                    0.0, BLOCK, True, 5, live_preview=True))
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
    assert [(v, t) for v, t, _ in live] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    fmt, img, _ = live[0][2]
    assert fmt == "JPEG" and img.size == (256, 256)
    import numpy as np
    expected = (first[0].numpy() * 255).round().astype("uint8")
    assert np.array_equal(np.asarray(img), expected), "the first live frame is not the step-1 concept map"
    assert not np.array_equal(np.asarray(live[-1][2][1]), np.asarray(img)), "the map did not change over steps"


def test_sdlens_mode_both_rows_adds_to_positive_and_subtracts_from_negative(tiny_model):
    """sdxl-unbox (hooks/sdxl.py, add_feature_on_area_base_both): + on the cond row, - on uncond."""
    from sae_concepts.host.block_patch import BlockCall
    from sae_concepts.nodes.steering import ConceptSteerEdit
    s = sae_set()
    s.entries[0].latent_mean = torch.rand(256, generator=torch.Generator().manual_seed(3))
    mask = torch.ones(1, 4, 4)
    edit = ConceptSteerEdit(tiny_model, BLOCK, s.entries, s, "7", "spatial", 10.0, 0.0, 1.0, "both", mask=mask,
                            mode="sdlens")
    change = edit(torch.randn(2, TINY_CH, 4, 4), BlockCall(BLOCK, torch.tensor([14.0, 14.0]), ["cond", "uncond"],
                                                           {"cond_or_uncond": [0, 1]}))
    sae = s.entries[0].sae
    direction = 10.0 * float(s.entries[0].latent_mean[7]) * sae.W_dec[7] * sae.input_scale
    torch.testing.assert_close(change[0].reshape(TINY_CH, -1).t(), direction.expand(16, -1).contiguous())
    torch.testing.assert_close(change[1], -change[0])


def test_load_sae_refuses_a_foreign_file_without_a_block_listing_the_valid_ones(registered, tmp_path):
    import folder_paths
    import json as _json
    folder = tmp_path / "my_sdlens"
    folder.mkdir()
    _json.dump({"n_dirs_local": 64, "d_model": 16, "k": 4}, open(folder / "config.json", "w"))
    torch.save({"state_dict": {"encoder.weight": torch.randn(64, 16), "decoder.weight": torch.randn(16, 64),
                               "pre_bias": torch.zeros(16), "latent_bias": torch.zeros(64)}}, folder / "state_dict.pth")
    folder_paths.add_model_folder_path("sae", str(tmp_path))
    load = registered["SAEConcepts_LoadSAE"]
    with pytest.raises(ValueError, match=r"names no block.*one of: sd1 down_blocks.0.attentions.0, .*sdxl "
                                         r"up_blocks.0.attentions.1") as err:
        load.execute("my_sdlens/state_dict.pth", "none", "from file")
    # The plugin is loaded as ComfyUI loads it (its own module copy): compare the class by name.
    assert "SAEConceptsError" in [c.__name__ for c in type(err.value).__mro__]
    # ... and when the prompt is queued, as a validation error on the node.
    msg = load.validate_inputs("my_sdlens/state_dict.pth", "none", "from file")
    assert isinstance(msg, str) and msg.startswith("Load SAE: ") and "names no block" in msg
    assert load.validate_inputs("my_sdlens/state_dict.pth", "none", "sdxl up_blocks.0.attentions.1") is True
    assert "not found" in load.validate_inputs("my_sdlens/state_dict.pth", "gone.json", "from file")
    assert "is not one of" in load.validate_inputs("my_sdlens/state_dict.pth", "none", "sd3 joint_blocks.0")
    loaded = out(load.execute("my_sdlens/state_dict.pth", "none", "sdxl up_blocks.0.attentions.1"))[0]
    assert loaded.entries[0].info.block == "output_blocks.1.1"


def test_auto_steers_a_word_only_where_the_dictionary_has_it(tiny_model, caplog):
    """With every block ("auto"), a block whose dictionary lacks the word is skipped (logged) and the
    others are steered; a word no block knows is an error naming the word."""
    from sae_concepts.nodes.steering import AUTO, steer_model
    other = "input_blocks.8.1"
    s = SAESet([SAEEntry(make_sae(seed=0), SAEInfo(block=BLOCK, t=None, cond="both")),
                SAEEntry(make_sae(seed=1), SAEInfo(block=other, t=None, cond="both"))])
    s.dictionary = ConceptDictionary([
        SAEConcepts(BLOCK, None, "both", {3: {"labels": ["dog"], "counts": {"dog": 1}}}),
        SAEConcepts(other, None, "both", {5: {"labels": ["striped"], "counts": {"striped": 1}}})])
    with caplog.at_level(logging.INFO, logger="sae_concepts"):
        _, edits = steer_model(tiny_model, s, AUTO, "dog", "global", 10.0, 0.0, 1.0, "both")
    assert list(edits) == [BLOCK]
    assert "skipped 1 block(s)" in caplog.text and other in caplog.text
    _, edits = steer_model(tiny_model, s, AUTO, "striped", "global", 10.0, 0.0, 1.0, "both")
    assert list(edits) == [other]
    with pytest.raises(ValueError, match="no block of the SAE set has a concept labelled 'zebra'"):
        steer_model(tiny_model, s, AUTO, "zebra", "global", 10.0, 0.0, 1.0, "both")
    with pytest.raises(ValueError, match=r"no concept of block input_blocks.8.1 is labelled \['dog'\]"):
        steer_model(tiny_model, s, other, "dog", "global", 10.0, 0.0, 1.0, "both")
