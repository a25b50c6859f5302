"""`sae-concepts demo`: the whole pipeline on a built-in default, checkable against the truth.

SYNTHETIC: activations come from training/demo/synthetic_scenes.py (planted concepts laid out in
space, known masks and labels), written as the same shards `collect` writes, then
train -> dictionary -> evaluate -> report run exactly as on real data. With ComfyUI present,
`collect` also runs for real on a random-weight SD1.5 checkpoint (a smoke run: random weights
have no concepts to find).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from ...sae_core import PAPER_BLOCKS, TrainConfig, load_sae
from ...sae_core.atomic import write_text_atomic
from ...sae_core.concept_dictionary import ConceptDictionary
from ...sae_core.cpu_threads import intra_op_threads
from ...sae_core.errors import ConfigError
from ...sae_core.synthetic import recovered_fraction
from ..collect.collect import save_png
from ..dictionary.dictionary import DictionaryConfig, build_dictionary
from ..evaluate.evaluate import EvaluateConfig, evaluate
from ..storage.masks import save_mask
from ..storage.shards import ShardWriter, activation_key
from .synthetic_scenes import GRID, LABELS, concept_directions, random_scene, scene_activations
from ..train.train import TrainCommandConfig, train_saes

TIMESTEPS = (1.0, 0.5, 0.0)
NOISE = {1.0: 0.06, 0.5: 0.04, 0.0: 0.03}   # concepts are a little fuzzier at the first step
D = 64


def key_seed(block: str, t: float, cond: str) -> int:
    return PAPER_BLOCKS.index(block) * 100 + TIMESTEPS.index(t) * 10 + ("cond", "uncond").index(cond)


def write_split(root: Path, split: str, n_images: int, first_id: int, seed: int, with_pictures: bool) -> None:
    writer = ShardWriter(root / split, run_config={"synthetic": True, "model_family": "sd1", "split": split,
                                                   "n_images": n_images, "seed": seed, "d": D})
    keys = [(b, t, c) for b in PAPER_BLOCKS for t in TIMESTEPS for c in ("cond", "uncond")]
    dirs = {k: concept_directions(D, key_seed(*k)) for k in keys}
    g = torch.Generator().manual_seed(seed)
    per_shard = 50
    for index, start in enumerate(range(0, n_images, per_shard)):
        ids = list(range(first_id + start, first_id + min(start + per_shard, n_images)))
        scenes = [random_scene(g) for _ in ids]
        if index in writer.done:
            continue
        tensors, pos = {}, torch.arange(GRID * GRID, dtype=torch.int32)
        for k in keys:
            acts = [scene_activations(s, dirs[k], g, NOISE[k[1]]) for s in scenes]
            name = activation_key(*k)
            tensors[f"{name}/acts"] = torch.cat(acts).half()
            tensors[f"{name}/prompt"] = torch.tensor(ids).repeat_interleave(GRID * GRID)
            tensors[f"{name}/pos"] = pos.repeat(len(ids))
        if with_pictures:
            for pid, s in zip(ids, scenes):
                save_png(root / split / "images" / f"{pid:06d}.png", s.image(g))
                for label, m in s.masks().items():
                    save_mask(root / split / "masks", pid, label, m)
        writer.write(index, tensors, {"prompt_ids": ids, "prompts": [s.prompt for s in scenes], "seeds": ids,
                                      "grids": {b: [GRID, GRID] for b in PAPER_BLOCKS}, "synthetic": True})


def truth_checks(sae_path: Path, dictionary: ConceptDictionary) -> list[dict]:
    """Per SAE: planted directions recovered, and the dictionary's label for each one right."""
    rows = []
    for e in load_sae(sae_path):
        label_dirs, _ = concept_directions(D, key_seed(e.info.block, e.info.t, e.info.cond))
        concepts = dictionary.for_sae(e.info.block, e.info.t, e.info.cond)
        # The SAE encodes x - b_pre, so a label's ideal decoder row is the unit vector from the
        # pre-bias to the label's planted centre (mean strength 1.0 along its direction).
        target = label_dirs - e.sae.b_pre * e.sae.input_scale
        w = e.sae.W_dec / e.sae.W_dec.norm(dim=1, keepdim=True)
        best = (target @ w.t()).argmax(1).tolist()
        right = sum(1 for lab, cid in zip(LABELS, best) if concepts and concepts.labels(cid)[:1] == [lab])
        rows.append({"block": e.info.block, "t": e.info.t, "cond": e.info.cond,
                     "recovered": recovered_fraction(target, e.sae.W_dec, 0.9),
                     "labels_right": right / len(LABELS)})
    return rows


# The worlds the demo can run on. "synthetic": planted concepts laid out in space (this module).
WORLDS = ("synthetic", "toy")   # "toy": the Toy World model (training/demo/toy_demo.py)
DEFAULT_EPOCHS = 3   # every planted concept is recovered after 2 (measured); 3 leaves a margin
EXPANSION = 2        # SAE features per activation channel
DEAD_NOTE = (f"dead is high here by design: {len(LABELS)} planted concepts per (block, t, cond) for "
             f"{EXPANSION * D} SAE features, so most features have nothing to learn.")


def run_demo(out: Path, n_train: int = 200, epochs: int = DEFAULT_EPOCHS, comfyui: str = "auto",
             progress: bool = True, keep_activations: bool = False, world: str = "synthetic") -> dict:
    """The whole pipeline on the synthetic world. Without keep_activations the train and held-out
    activations (~150 MB, regenerated from their seed when needed) are removed once trained on
    and labelled with; the eval split stays, so `evaluate` and `report` can be rerun on it."""
    if world not in WORLDS:
        raise ConfigError(f"--world: unknown world {world!r}; choose one of {', '.join(WORLDS)}")
    # Every tensor here is small: intra-op threads would gain nothing and, with another process
    # on a core, lose ~10x at their barriers (sae_core/cpu_threads.py). Results do not depend on it.
    with intra_op_threads(1):
        return _run_demo(out, n_train, epochs, comfyui, progress, keep_activations)


def _run_demo(out: Path, n_train: int, epochs: int, comfyui: str, progress: bool, keep_activations: bool) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    data = out / "synthetic"
    sae_path = out / "sae_set.safetensors"
    dict_path = out / "concept_dictionary.json"
    write_split(data, "eval", 40, 200_000, seed=3, with_pictures=True)
    write_split(data, "train", n_train, 0, seed=1, with_pictures=False)
    # One planted concept per position, so k = 1 (k above the true sparsity splits concepts). The
    # run folder lives outside the train split, so removing the split keeps the finished run.
    train_saes(TrainCommandConfig(shards=str(data / "train"), out=str(sae_path), expansion_factor=EXPANSION, k=1,
                                  batch_size=1024, shuffle_window=1 << 16, epochs=epochs,
                                  run_dir=str(out / "train_run")),
               TrainConfig(lr=3e-3, dead_after=50_000, k_aux=32, checkpoint_every=100, log_every=20),
               progress=progress)
    if not keep_activations:
        shutil.rmtree(data / "train")
    write_split(data, "heldout", 60, 100_000, seed=2, with_pictures=True)
    dictionary = build_dictionary(DictionaryConfig(shards=str(data / "heldout"), sae=str(sae_path),
                                                   masks=str(data / "heldout" / "masks"), out=str(dict_path)),
                                  progress=progress)
    if not keep_activations:
        shutil.rmtree(data / "heldout")
    rows = evaluate(EvaluateConfig(shards=str(data / "eval"), sae=str(sae_path), dictionary=str(dict_path),
                                   masks=str(data / "eval" / "masks"), out=str(out / "metrics.json")))
    truth = truth_checks(sae_path, dictionary)
    smoke = comfyui_smoke_run(out, comfyui, progress)
    from ..report.report import build_report
    summary = {"synthetic": True, "metrics": rows, "truth": truth, "comfyui_smoke": smoke}
    write_text_atomic(out / "demo_summary.json", json.dumps(summary, indent=1))
    build_report(out / "report", sae_path, dict_path, out / "metrics.json", data / "eval", data / "eval" / "masks",
                 synthetic_note="SYNTHETIC DEMO: activations are planted concepts laid out in space (known "
                                "masks and labels), not a diffusion model. Truth checks below compare every "
                                "stage with the planted answers.", truth=truth, smoke=smoke)
    return summary


def comfyui_smoke_run(out: Path, mode: str, progress: bool) -> dict | None:
    """With ComfyUI present: collect for real from a random-weight SD1.5 checkpoint."""
    from ...host.comfy_env import find_comfyui
    if mode == "off" or (mode == "auto" and find_comfyui() is None):
        return None
    from ..collect.collect import CollectConfig, collect, write_prompt_index
    from ...host.comfy_env import import_comfy
    from ...host.random_checkpoint import cached_random_sd1_checkpoint
    try:
        import_comfy()
        import comfy.sample  # noqa: F401  (imports ComfyUI's model code; torchvision, if missing, gets the stand-in)
    except ImportError as e:
        if mode == "on":
            raise
        print(f"ComfyUI found but not importable here ({e}); the ComfyUI collection smoke run is skipped")
        return {"skipped": f"ComfyUI found but not importable ({e})"}
    ckpt = cached_random_sd1_checkpoint()
    prompts = out / "smoke_prompts.txt"
    prompts.write_text("a dog on a beach\na red car in a city\na castle on a hill\n")
    cfg = CollectConfig(checkpoint=str(ckpt), prompts=str(prompts), out=str(out / "comfyui_collect"), steps=4,
                        width=128, height=128, timesteps="1.0,0.0", prompts_per_shard=2,
                        weight_dtype="fp8_e4m3fn")   # as the file stores it: 2.9 GiB at load, not float32's 5.2
    acts = collect(cfg, progress=progress)
    write_prompt_index(acts)
    from ..storage.shards import ShardSet
    s = ShardSet.open(acts)
    return {"checkpoint": "random-weight SD1.5 (no real weights exist offline)", "folder": str(acts),
            "vectors": {k: s.vectors(k) for k in s.keys()}}


def format_truth(truth: list[dict]) -> str:
    lines = [f"{'block':<18} {'t':>4} {'cond':<6} {'recovered':>9} {'labels right':>12}"]
    for r in truth:
        lines.append(f"{r['block']:<18} {r['t']:>4g} {r['cond']:<6} {r['recovered']:>9.0%} {r['labels_right']:>12.0%}")
    return "\n".join(lines)
