"""collect -> train -> dictionary -> evaluate on a tiny Flux (host tier), and the CLI's Flux loader inputs."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sae_concepts.sae_core import TrainConfig, load_sae

BLOCKS = ("double_blocks.1", "single_blocks.0")


@pytest.fixture(scope="module")
def flux(comfy):
    from random_models import build_random_flux
    return build_random_flux(seed=0)


def test_collect_train_dictionary_evaluate_on_flux(flux, tmp_path):
    from random_models import RandomFluxText
    from sae_concepts.host.block_patch import patch_block
    from sae_concepts.nodes.global_style_steer import GlobalStyleSteer
    from sae_concepts.sae_core.concept_dictionary import ConceptDictionary
    from sae_concepts.training.collect.collect import CollectConfig, collect
    from sae_concepts.training.dictionary.dictionary import DictionaryConfig, build_dictionary
    from sae_concepts.training.evaluate.evaluate import EvaluateConfig, evaluate
    from sae_concepts.training.storage.shards import ShardSet, activation_key
    from sae_concepts.training.train.train import TrainCommandConfig, train_saes

    prompts = ["a dog", "a cat on a sofa", "a red car", "a castle"]
    (tmp_path / "p.txt").write_text("\n".join(prompts) + "\n")
    cfg = CollectConfig(prompts=str(tmp_path / "p.txt"), out=str(tmp_path / "acts"), blocks=",".join(BLOCKS),
                        steps=4, cfg=1.0, sampler="euler", scheduler="simple", width=96, height=80,
                        timesteps="1.0,0.0", save_images=False, prompts_per_shard=2, guidance=3.5)
    text = RandomFluxText()
    collect(cfg, flux, text, None, progress=False)
    s = ShardSet.open(tmp_path / "acts")
    assert s.config["model_family"] == "flux" and s.config["quantity"] == "delta"
    assert s.keys() == sorted(activation_key(b, t, "cond") for b in BLOCKS for t in (0.0, 1.0))
    shard = s.shards[0]
    assert shard["grids"] == {b: [5, 6] for b in BLOCKS} and shard["channels"] == {b: 64 for b in BLOCKS}
    assert shard["blocks_diffusers"] == {"double_blocks.1": "transformer_blocks.1",
                                         "single_blocks.0": "single_transformer_blocks.0"}
    assert shard["step_index"] == {"1": 0, "0": 3}
    assert s.vectors(activation_key("double_blocks.1", 1.0, "cond")) == 4 * 30   # 5 x 6 image tokens per image

    # The recorded rows are the block's image-token Delta at the first step (prompt 0, token order).
    import comfy.sample
    rec = []
    m = patch_block(flux, "double_blocks.1", lambda g, c: rec.append(g.clone()) or None)
    noise = torch.randn(1, 16, 10, 12, generator=torch.Generator().manual_seed(cfg.seed))
    pos = text.encode_from_tokens_scheduled(prompts[0])
    pos[0][1]["guidance"] = 3.5
    comfy.sample.sample(m, noise, 4, 1.0, "euler", "simple", pos, pos, torch.zeros_like(noise), disable_pbar=True,
                        seed=cfg.seed)
    from safetensors.torch import load_file
    first = load_file(str(tmp_path / "acts" / shard["file"]))[f"{activation_key('double_blocks.1', 1.0, 'cond')}/acts"]
    torch.testing.assert_close(first[:30].float(), rec[0][0].reshape(64, 30).t().half().float())

    entries = train_saes(TrainCommandConfig(shards=str(tmp_path / "acts"), out=str(tmp_path / "flux.safetensors"),
                                            expansion_factor=2, k=4, batch_size=32),
                         TrainConfig(lr=1e-3, checkpoint_every=0), progress=False)
    assert len(entries) == 4
    sae_set = load_sae(tmp_path / "flux.safetensors")
    info = sae_set.select("transformer_blocks.1", 1.0, "cond").info
    assert (info.model_family, info.block, info.block_diffusers, info.quantity) == \
        ("flux", "double_blocks.1", "transformer_blocks.1", "delta")

    # Masks: one planted per image, the region where one concept fires (so the dictionary must find it).
    from sae_concepts.training.dictionary.dictionary import concept_maps
    e = sae_set.select("double_blocks.1", 1.0, "cond")
    key = activation_key("double_blocks.1", 1.0, "cond")
    data = load_file(str(tmp_path / "acts" / shard["file"]))
    rows = data[f"{key}/acts"][:30].float()
    ids, maps = concept_maps(e.sae, rows, (5, 6))
    best = int(maps.flatten(1).max(1).values.argmax())
    cid, region = int(ids[best]), maps[best] >= 0.1 * maps[best].max()
    masks = tmp_path / "masks" / "000000"
    masks.mkdir(parents=True)
    big = region.float().repeat_interleave(16, 0).repeat_interleave(16, 1).numpy()
    Image.fromarray((big * 255).astype(np.uint8)).save(masks / "dog.png")
    d = build_dictionary(DictionaryConfig(shards=str(tmp_path / "acts"), sae=str(tmp_path / "flux.safetensors"),
                                          masks=str(tmp_path / "masks"), out=str(tmp_path / "dict.json")),
                         progress=False)
    assert cid in d.for_sae("double_blocks.1", 1.0, "cond").lookup("dog")
    # ITDA from the same shards, through the CLI; evaluate reports its FVU beside the SAE's at the SAE's L0.
    from sae_concepts.training.cli import main
    assert main(["itda", "--shards", str(tmp_path / "acts"), "--out", str(tmp_path / "itda.safetensors"),
                 "--k", "4", "--threshold", "0.3", "--quiet"]) == 0
    itda_set = load_sae(tmp_path / "itda.safetensors")
    assert len(itda_set) == 4 and all(e.info.source_format == "itda" and e.info.model_family == "flux" for e in itda_set)
    rows_metrics = evaluate(EvaluateConfig(shards=str(tmp_path / "acts"), sae=str(tmp_path / "flux.safetensors"),
                                           out=str(tmp_path / "metrics.json"), itda=str(tmp_path / "itda.safetensors")))
    assert len(rows_metrics) == 4 and all(np.isfinite(r["fvu"]) and 0 <= r["fvu"] < 1.5 for r in rows_metrics)
    for r in rows_metrics:   # every training vector was reconstructed under the threshold when it was seen
        assert 0 <= r["itda_fvu"] < 1 and 0 < r["itda_l0"] <= 4 and r["itda_atoms"] > 0
    # The ITDA set steers and maps where an SAE set does.
    itda_steered = GlobalStyleSteer.execute(flux, itda_set, "0, 1", 50.0, "double_blocks.1", 0.0, 1.0, "cond",
                                            mode="activation_addition").result[0]
    from sae_concepts.nodes.concept_map_preview import ConceptMapPreview
    image, _, text = ConceptMapPreview.execute(flux, itda_set, pos, pos, {"samples": torch.zeros(1, 16, 10, 12)}, 0, 4,
                                               1.0, "euler", "simple", 0.0, "double_blocks.1", False, 3,
                                               live_preview=False).result
    assert image.shape == (1, 80, 96, 3) and "concept " in text
    # The trained set steers the model it came from, by word.
    sae_set.dictionary = ConceptDictionary.load(tmp_path / "dict.json")
    steered = GlobalStyleSteer.execute(flux, sae_set, "dog", 500.0, "double_blocks.1", 0.0, 1.0, "cond").result[0]
    base = comfy.sample.sample(flux, noise, 4, 1.0, "euler", "simple", pos, pos, torch.zeros_like(noise),
                               disable_pbar=True, seed=0)
    out = comfy.sample.sample(steered, noise, 4, 1.0, "euler", "simple", pos, pos, torch.zeros_like(noise),
                              disable_pbar=True, seed=0)
    assert not torch.allclose(out, base)
    out_itda = comfy.sample.sample(itda_steered, noise, 4, 1.0, "euler", "simple", pos, pos, torch.zeros_like(noise),
                                   disable_pbar=True, seed=0)
    assert not torch.allclose(out_itda, base)


def test_flux_collect_inputs_are_checked(comfy, tmp_path):
    from sae_concepts.host.loaders import ModelLoadError, load_parts
    from sae_concepts.sae_core.errors import ConfigError
    from sae_concepts.training.collect.collect import CollectConfig, check_collect_config
    with pytest.raises(ConfigError, match="not both"):
        check_collect_config(CollectConfig(checkpoint="a.safetensors", diffusion_model="b.safetensors"))
    with pytest.raises(ConfigError, match="--text-encoders and --vae go with --diffusion-model"):
        check_collect_config(CollectConfig(checkpoint="a.safetensors", text_encoders="t5.safetensors"))
    with pytest.raises(ConfigError, match="--quantity must be delta or output"):
        check_collect_config(CollectConfig(quantity="residual"))
    with pytest.raises(ModelLoadError, match="diffusion model .*nothere.safetensors not found"):
        load_parts(str(tmp_path / "nothere.safetensors"), [])
    from safetensors.torch import save_file
    save_file({"foo.weight": torch.zeros(2, 2)}, tmp_path / "junk.safetensors")
    with pytest.raises(ModelLoadError, match="junk.safetensors cannot be loaded"):
        load_parts(str(tmp_path / "junk.safetensors"), [])
