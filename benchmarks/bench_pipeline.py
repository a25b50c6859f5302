"""Pipeline costs, each as a ratio measured in one run.

1. Collection overhead: sampling with the collector's capture wrappers on the paper's three
   blocks / three timestep buckets, over the same sampling without them (full-size random SD1.5,
   needs ComfyUI). Target <= 1.15.
2. Bytes written per vector (fp16 shards, manifest and safetensors headers included).
3. Training throughput streaming from disk over training from in-memory batches, at the core
   benchmark's size (d = 1280, n_f = 5120, k = 10, batch 4096). Target >= 80 %.

Usage: python benchmarks/bench_pipeline.py [--skip-collect] [--steps 8]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def bench_collect(repeats: int, size: int) -> None:
    import conftest  # noqa: F401  (the tests' settings: one torch thread unless OMP_NUM_THREADS is set)
    from sae_concepts.host.comfy_env import import_comfy
    from random_models import build_random_sd1
    import_comfy()   # the torchvision stand-in where none works
    import comfy.sample
    from sae_concepts.host.block_patch import patch_block
    from sae_concepts.sae_core import PAPER_BLOCKS
    from sae_concepts.host.block_patch import TimestepRecorder
    from sae_concepts.training.collect.collect import CollectConfig, bucket_sigmas

    model = build_random_sd1(tiny=False)
    steps = 6
    targets, _ = bucket_sigmas(model, CollectConfig(steps=steps), [1.0, 0.5, 0.0])
    recorders = [TimestepRecorder(targets, torch.float16) for _ in PAPER_BLOCKS]
    captured = model
    for block, rec in zip(PAPER_BLOCKS, recorders):
        captured = patch_block(captured, block, rec)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(1, 4, size, size, generator=g)
    pos, neg = [[torch.randn(1, 77, 768, generator=g), {}]], [[torch.zeros(1, 77, 768), {}]]

    def run(m):
        for r in recorders:
            r.reset()
        comfy.sample.sample(m, noise, steps, 7.5, "ddim", "ddim_uniform", pos, neg, torch.zeros_like(noise),
                            disable_pbar=True, seed=0)
    run(model), run(captured)
    plain, cap = [], []
    for _ in range(repeats):
        for m, ts in ((model, plain), (captured, cap)):
            t0 = time.perf_counter()
            run(m)
            ts.append(time.perf_counter() - t0)
    recorded = sum(len(r.seen) for r in recorders)
    print(f"collection: SD1.5 full size, latent {size}x{size}, {steps} ddim steps, cfg 7.5, 3 blocks x 3 buckets "
          f"({recorded} Delta tensors recorded per run): plain {statistics.median(plain):.2f} s, with capture "
          f"{statistics.median(cap):.2f} s, ratio {statistics.median(cap) / statistics.median(plain):.3f} "
          f"(min-based {min(cap) / min(plain):.3f})")


def bench_storage_and_streaming(steps: int) -> None:
    from sae_concepts.sae_core import SaeConfig, TrainConfig, Trainer
    from sae_concepts.training.storage.shards import ShardSet, ShardWriter, activation_key, stream_batches
    d, per_shard, n_shards, batch = 1280, 4096, max(4, steps + 2), 4096
    key = activation_key("middle_block.1", 1.0, "cond")
    with tempfile.TemporaryDirectory() as tmp:
        w = ShardWriter(tmp)
        g = torch.Generator().manual_seed(0)
        for i in range(n_shards):
            w.write(i, {f"{key}/acts": torch.randn(per_shard, d, generator=g).half(),
                        f"{key}/prompt": torch.full((per_shard,), i, dtype=torch.int64),
                        f"{key}/pos": torch.arange(per_shard, dtype=torch.int32)}, {"prompt_ids": [i]})
        total = sum(p.stat().st_size for p in Path(tmp).iterdir())
        print(f"storage: {total / (n_shards * per_shard):.1f} bytes per vector written "
              f"(fp16 payload {2 * d} bytes at d = {d}; the rest is prompt id, position and headers)")
        s = ShardSet.open(tmp)
        mem = [torch.randn(batch, d, generator=g) for _ in range(steps)]

        def rate(batches) -> float:
            tr = Trainer(SaeConfig(d_in=d, n_latents=4 * d, k=10), TrainConfig(max_steps=steps + 1, log_every=1000,
                                                                             checkpoint_every=0))
            it = iter(batches)
            tr.train_step(next(it))  # initialisation (geometric median) is not throughput
            t0 = time.perf_counter()
            n = 0
            for x in it:
                tr.train_step(x)
                n += x.shape[0]
            return n / (time.perf_counter() - t0)
        in_memory = rate([mem[0]] + mem)
        streaming = rate(stream_batches(s, key, batch, window=4 * per_shard, seed=0))
        in_memory2 = rate([mem[0]] + mem)
        base = (in_memory + in_memory2) / 2
        print(f"training throughput: in memory {base:,.0f} vectors/s, streaming from disk {streaming:,.0f} "
              f"vectors/s, ratio {streaming / base:.0%}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--skip-collect", action="store_true")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--size", type=int, default=32, help="latent side for the collection benchmark")
    p.add_argument("--steps", type=int, default=8, help="training steps per throughput measurement")
    a = p.parse_args(argv)
    print(f"threads={torch.get_num_threads()} torch={torch.__version__}")
    bench_storage_and_streaming(a.steps)
    if not a.skip_collect:
        bench_collect(a.repeats, a.size)


if __name__ == "__main__":
    main()
