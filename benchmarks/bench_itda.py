"""ITDA build time over SAE training time, from the same shards, as `sae-concepts train` and
`sae-concepts itda` run them (shard reading and checks included), in one run.

Shards: `--shards DIR` (a collection from `sae-concepts collect`), or by default the demo's
synthetic world (training/demo: planted concepts laid out in space, d 64), `--images` images of
the key `--only` names written to a temporary folder; `--d` widens it (the per-dimension noise
scaled so that its share of each vector's energy stays the demo's). The SAE trains with the demo's settings unless
told otherwise; ITDA grows once per `--threshold`. Times are process CPU seconds on one intra-op
thread (the demo's setting; on this shared machine wall time mostly measures the other jobs);
beside them, each one's FVU on the same vectors at the SAE's L0 (`evaluate --itda`'s figure).

    python benchmarks/bench_itda.py                              # demo world, middle_block.1 t=0.5 cond
    python benchmarks/bench_itda.py --threshold 0.1 0.3 0.6
    python benchmarks/bench_itda.py --shards my_collection --only middle_block.1,t=1,|cond --sae-k 10 \
        --expansion-factor 4 --epochs 1
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from sae_concepts.sae_core import TrainConfig
from sae_concepts.sae_core.cpu_threads import intra_op_threads
from sae_concepts.training.demo.demo import NOISE, key_seed
from sae_concepts.training.demo.synthetic_scenes import GRID, concept_directions, random_scene, scene_activations
from sae_concepts.training.evaluate.evaluate import _AtK, reconstruction_metrics
from sae_concepts.training.itda.itda import ItdaCommandConfig, build_itda_set
from sae_concepts.training.storage.shards import ShardSet, ShardWriter, activation_key, sae_key
from sae_concepts.training.train.train import TrainCommandConfig, train_saes


def write_world(root: Path, n_images: int, d: int, block: str, t: float, cond: str, per_shard: int = 50) -> None:
    """The demo world's vectors for one key (its concept directions, drawn at width d), as shards."""
    writer = ShardWriter(root, run_config={"synthetic": True, "model_family": "sd1", "d": d})
    dirs = concept_directions(d, key_seed(block, t, cond))
    noise = NOISE[t] * (64 / d) ** 0.5
    g = torch.Generator().manual_seed(1)
    key = activation_key(block, t, cond)
    for index, start in enumerate(range(0, n_images, per_shard)):
        ids = list(range(start, min(start + per_shard, n_images)))
        scenes = [random_scene(g) for _ in ids]
        writer.write(index, {f"{key}/acts": torch.cat([scene_activations(sc, dirs, g, noise) for sc in scenes]).half(),
                             f"{key}/prompt": torch.tensor(ids).repeat_interleave(GRID * GRID),
                             f"{key}/pos": torch.arange(GRID * GRID, dtype=torch.int32).repeat(len(ids))},
                     {"prompt_ids": ids, "prompts": [sc.prompt for sc in scenes], "seeds": ids,
                      "grids": {block: [GRID, GRID]}, "synthetic": True})


def cpu_seconds(fn):
    t0 = time.process_time()
    out = fn()
    return out, time.process_time() - t0


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shards", default="", help="a collection folder (default: the demo world's train split)")
    p.add_argument("--images", type=int, default=200, help="demo world: images (the demo's train split: 200)")
    p.add_argument("--d", type=int, default=64, help="demo world: width (the demo's: 64)")
    p.add_argument("--only", default="middle_block.1,t=0.5,|cond",
                   help="keys to build (train's --only); demo world: block,t=T,|cond of the one key written")
    p.add_argument("--expansion-factor", type=int, default=2, help="SAE (the demo's: 2)")
    p.add_argument("--sae-k", type=int, default=1, help="SAE active latents (the demo's: 1)")
    p.add_argument("--epochs", type=int, default=3, help="SAE passes (the demo's: 3)")
    p.add_argument("--batch-size", type=int, default=1024, help="SAE batch (the demo's: 1024)")
    p.add_argument("--lr", type=float, default=3e-3, help="SAE learning rate (the demo's: 3e-3)")
    p.add_argument("--k", type=int, default=ItdaCommandConfig.k, help="ITDA target L0")
    p.add_argument("--encoder", default=ItdaCommandConfig.encoder, help="ITDA encoder: gp or mp")
    p.add_argument("--threshold", type=float, nargs="+", default=[ItdaCommandConfig.threshold, 0.3],
                   help="ITDA thresholds, one build each")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp, intra_op_threads(1):
        tmp = Path(tmp)
        shards = Path(a.shards) if a.shards else tmp / "world"
        if not a.shards:
            block, t, cond = (part.strip() for part in a.only.split(","))
            write_world(shards, a.images, a.d, block, float(t.removeprefix("t=")), cond.removeprefix("|"))
        sae_set, t_sae = cpu_seconds(lambda: train_saes(
            TrainCommandConfig(shards=str(shards), out=str(tmp / "sae.safetensors"), only=a.only,
                               expansion_factor=a.expansion_factor, k=a.sae_k, batch_size=a.batch_size,
                               shuffle_window=max(1 << 16, a.batch_size), epochs=a.epochs, device="cpu",
                               run_dir=str(tmp / "train_run")),
            TrainConfig(lr=a.lr, dead_after=50_000, k_aux=32, checkpoint_every=100, log_every=20), progress=False))
        data = ShardSet.open(shards)
        keys = [sae_key(e.info) for e in sae_set]
        vectors = sum(data.vectors(k) for k in keys)
        sae_fvu = [reconstruction_metrics(e.sae, data, k)["fvu"] for e, k in zip(sae_set, keys)]
        print(f"shards: {shards if a.shards else f'demo world, {a.images} images, d {a.d}'}; keys: {', '.join(keys)}; "
              f"{vectors} vectors; 1 intra-op thread, process CPU seconds")
        print(f"SAE  (n_f {sae_set[0].sae.n_latents}, k {a.sae_k}, {a.epochs} epochs): {t_sae:7.2f} s, "
              f"FVU {', '.join(f'{f:.3f}' for f in sae_fvu)}")
        for thr in a.threshold:
            itda_set, t_itda = cpu_seconds(lambda: build_itda_set(ItdaCommandConfig(
                shards=str(shards), out=str(tmp / f"itda_{thr}.safetensors"), only=a.only, k=a.k, threshold=thr,
                encoder=a.encoder), progress=False))
            fvu = [reconstruction_metrics(_AtK(e.sae, a.sae_k), data, sae_key(e.info))["fvu"] for e in itda_set]
            print(f"ITDA ({a.encoder}, k {a.k}, threshold {thr}): {t_itda:7.2f} s, "
                  f"{', '.join(str(e.sae.n_latents) for e in itda_set)} atoms, FVU at the SAE's L0 "
                  f"{', '.join(f'{f:.3f}' for f in fvu)};  ITDA time / SAE time = {t_itda / t_sae:.3f}")


if __name__ == "__main__":
    main()
