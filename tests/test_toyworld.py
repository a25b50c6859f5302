"""Toy World: renderer, prompts, detector, deterministic resumable training, ComfyUI sampling
path, and the shipped model's (reduced) quality bar."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sae_concepts.training.toyworld.detect import detect
from sae_concepts.training.toyworld.world import (COLOURS, STYLES, VOCAB, parse_prompt, render, sample_scene,
                                                   tokenize)


def test_prompt_tokens_and_parse():
    ids = tokenize("a red circle and a blue square on striped background")
    assert len(ids) == 8 and [VOCAB[i] for i in ids[:7]] == ["red", "circle", "and", "blue", "square",
                                                              "striped", "background"]
    assert tokenize("") == [0] * 8
    assert parse_prompt("red circle and blue square on striped background") == (
        [("red", "circle"), ("blue", "square")], "striped")
    with pytest.raises(ValueError, match="unknown word"):
        tokenize("purple circle")


def test_render_masks_and_labels_match_the_scene():
    rng = np.random.default_rng(0)
    for _ in range(50):
        scene = sample_scene(rng)
        r = render(scene)
        assert r.image.shape == (48, 48, 3) and r.masks.shape[0] == len(scene.objects)
        assert not (r.masks.sum(0) > 1).any(), "objects never overlap"
        for mask, obj, label in zip(r.masks, scene.objects, r.labels):
            assert label == f"{obj.colour} {obj.shape}" and mask.sum() > 50
            assert np.allclose(r.image[mask], COLOURS[obj.colour])


def test_detector_reads_rendered_truth_exactly():
    rng = np.random.default_rng(1)
    n, right = 400, {"objects": 0, "count": 0, "style": 0}
    seen_styles = set()
    for _ in range(n):
        scene = sample_scene(rng)
        d = detect(render(scene).image)
        right["objects"] += sorted((o.colour, o.shape) for o in scene.objects) == sorted(
            (o.colour, o.shape) for o in d.objects)
        right["count"] += d.count == len(scene.objects)
        right["style"] += d.style == scene.style
        seen_styles.add(scene.style)
    assert seen_styles == set(STYLES)
    assert right == {"objects": n, "count": n, "style": n}


def test_detector_finds_nothing_on_plain_grey():
    d = detect(np.full((48, 48, 3), 0.8, dtype=np.float32))
    assert d.count == 0 and d.style == "plain"


def _tiny_train_cfg(out, **kw):
    from sae_concepts.training.toyworld.train import ToyTrainConfig
    return ToyTrainConfig(**{"out": str(out), "steps": 4, "batch_size": 2, "warmup": 2, "checkpoint_every": 2, **kw})


def test_training_is_deterministic_and_resumes_exactly(comfy, tmp_path):
    from sae_concepts.training.toyworld.train import train
    straight = train(_tiny_train_cfg(tmp_path / "a"), progress=False)
    train(_tiny_train_cfg(tmp_path / "b"), progress=False, stop_after=2)      # "killed" after 2 steps
    resumed = train(_tiny_train_cfg(tmp_path / "b"), progress=False)          # a new session resumes
    assert straight.step == resumed.step == 4
    a, b = straight.state_tensors(), resumed.state_tensors()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # and it learned something: the weights moved from their initial values
    fresh = train(_tiny_train_cfg(tmp_path / "c", seed=1), progress=False, stop_after=0)
    assert not torch.equal(fresh.state_tensors()["model.diffusion_model.out.2.bias"], a["model.diffusion_model.out.2.bias"])


def test_resume_with_other_settings_is_an_error(comfy, tmp_path):
    from sae_concepts.training.toyworld.train import train
    train(_tiny_train_cfg(tmp_path), progress=False, stop_after=2)
    with pytest.raises(ValueError, match="lr"):
        train(_tiny_train_cfg(tmp_path, lr=1e-3), progress=False)


def test_exported_model_samples_through_comfy(comfy, tmp_path):
    """The exported file loads as a ComfyUI ModelPatcher (SD1.x block paths, EPS, SD1.x sigmas)
    and comfy.sample.sample runs it with CFG."""
    from sae_concepts.training.toyworld.sampling import encode_prompt, load_toy_model, sample_images
    from sae_concepts.training.toyworld.train import CHECKPOINT, export_weights, sd1_alphas_cumprod, train
    train(_tiny_train_cfg(tmp_path), progress=False, stop_after=2)
    weights = export_weights(tmp_path / CHECKPOINT, tmp_path / "toy.safetensors")
    patcher, text_encoder = load_toy_model(weights)
    unet = patcher.model.diffusion_model
    for path in ("input_blocks.8.1", "middle_block.1", "output_blocks.3.1"):
        assert type(unet.get_submodule(path)).__name__ == "SpatialTransformer", path
    ms = patcher.get_model_object("model_sampling")
    ac = sd1_alphas_cumprod()
    assert torch.allclose(ms.sigmas, ((1 - ac) / ac).sqrt(), rtol=1e-4)
    cond = encode_prompt(text_encoder, "red circle on plain background")
    assert cond[0][0].shape == (1, 8, 64)
    images = sample_images(patcher, text_encoder, ["red circle", "blue square and green triangle"], seed=0, steps=2)
    assert images.shape == (2, 48, 48, 3) and torch.isfinite(images).all()
    assert 0 <= images.min() and images.max() <= 1


@pytest.mark.xfail(strict=True, reason="toyworld v2 is below the quality bar (measured on 200 held-out prompts: "
                   "colour+shape 20 %, style 50 %, count 58.5 %; see training/toyworld/MODEL_CARD.md); "
                   "strict: this xfail must be removed when a retrained model passes")
def test_shipped_model_passes_a_reduced_quality_bar(comfy, tmp_path):
    """32 held-out prompts, 25 DDIM steps with CFG: each figure >= 80 % (the full bar is 90 % on
    >= 200 prompts; `sae-concepts toyworld evaluate` measures that)."""
    from sae_concepts.training.toyworld.evaluate import ToyEvalConfig, evaluate_model
    from sae_concepts.training.toyworld.sampling import SHIPPED_WEIGHTS
    if not SHIPPED_WEIGHTS.is_file():
        pytest.skip(f"NO SHIPPED TOY WORLD WEIGHTS at {SHIPPED_WEIGHTS}: train them with "
                    "`sae-concepts toyworld train` (see training/toyworld/MODEL_CARD.md)")
    s = evaluate_model(ToyEvalConfig(prompts=32, batch_size=32, out=str(tmp_path / "q.json")), progress=False)["summary"]
    assert s["colour_shape"] >= 0.8 and s["style"] >= 0.8 and s["count"] >= 0.8, s


def test_ground_truth_scene_for_a_prompt():
    from sae_concepts.training.toyworld.world import scene_from_prompt
    rng = np.random.default_rng(3)
    for prompt in ["red circle on dotted background", "blue square and yellow triangle on checkered background"]:
        scene = scene_from_prompt(prompt, rng)
        assert scene.prompt == prompt
        r = render(scene)
        d = detect(r.image)
        truth = dict(zip(r.labels, r.masks))
        assert sorted(o.label for o in d.objects) == sorted(truth)
        for o in d.objects:
            assert np.array_equal(o.mask, truth[o.label]), o.label


def test_schedule_can_be_extended_on_resume_and_is_recorded(comfy, tmp_path):
    from sae_concepts.training.toyworld.train import train
    train(_tiny_train_cfg(tmp_path), progress=False, stop_after=2)
    a = train(_tiny_train_cfg(tmp_path, steps=6), progress=False, stop_after=1)
    assert a.step == 3 and a.schedule == [[0, 4], [2, 6, 0.1]]   # offset noise (default 0.1) recorded with an extension
    b = train(_tiny_train_cfg(tmp_path, steps=6), progress=False, stop_after=1)   # same length: no new entry
    assert b.step == 4 and b.schedule == [[0, 4], [2, 6, 0.1]]
    with pytest.raises(ValueError, match="past --steps"):
        train(_tiny_train_cfg(tmp_path, steps=3), progress=False)
