"""Overhead of steering and of ConceptMapPreview's capture on a sampling step.

Full-size SD1.5 U-Net (random weights, ComfyUI's own classes), 64x64 latent (512 px), cfg 7.5
(batch 2), one ddim step per timed run. Prints steered / unsteered and captured / unsteered
time ratios, measured interleaved in one run. Needs ComfyUI (see README).

Usage: python benchmarks/bench_steer_overhead.py [--repeats 3] [--size 64] [--block middle_block.1]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--size", type=int, default=64, help="latent side (64 = 512 px)")
    p.add_argument("--block", default="middle_block.1")
    a = p.parse_args(argv)
    import conftest  # noqa: F401  (the tests' settings: one torch thread unless OMP_NUM_THREADS is set)
    from sae_concepts.host.comfy_env import import_comfy
    from random_models import build_random_sd1
    import_comfy()   # the torchvision stand-in where none works
    import comfy.sample
    from sae_concepts.host.block_patch import patch_block
    from sae_concepts.host.block_patch import TimestepRecorder
    from sae_concepts.nodes.spatial_concept_steer import SpatialConceptSteer
    from sae_concepts.nodes.global_style_steer import GlobalStyleSteer
    from sae_concepts.sae_core import SAEEntry, SAEInfo, SAESet, SaeConfig, TopKSAE

    model = build_random_sd1(tiny=False)
    sae = TopKSAE(SaeConfig(d_in=1280, n_latents=5120, k=10)).eval().requires_grad_(False)
    s = SAESet([SAEEntry(sae, SAEInfo(block=a.block, cond="both"))])
    mask = torch.zeros(1, a.size * 8, a.size * 8)
    mask[:, : a.size * 4, : a.size * 4] = 1
    variants = {
        "unsteered": model,
        "spatial steer": SpatialConceptSteer.execute(model, s, "17, 40", mask, 4000.0, a.block, 0.0, 1.0, "both").result[0],
        "global steer": GlobalStyleSteer.execute(model, s, "17", 10.0, a.block, 0.0, 1.0, "both").result[0],
    }
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(1, 4, a.size, a.size, generator=g)
    pos = [[torch.randn(1, 77, 768, generator=g), {}]]
    neg = [[torch.zeros(1, 77, 768), {}]]
    lat = torch.zeros(1, 4, a.size, a.size)

    def run(m):
        capture.reset()   # so every run records, as the node does once per execution
        comfy.sample.sample(m, noise, 1, 7.5, "ddim", "normal", pos, neg, lat, disable_pbar=True, seed=0)

    # The capture edit compares sigmas on every call; give it the real first-step sigma so it
    # also does its copy, as in the node.
    import comfy.samplers
    first_sigma = float(comfy.samplers.KSampler(model, 1, model.load_device, "ddim", "normal").sigmas[0])
    capture = TimestepRecorder({first_sigma: first_sigma})
    variants["capture (ConceptMapPreview)"] = patch_block(model, a.block, capture)
    for m in variants.values():
        run(m)  # warm-up: model load, first-call allocations
    times = {k: [] for k in variants}
    for _ in range(a.repeats):
        for name, m in variants.items():
            t0 = time.perf_counter()
            run(m)
            times[name].append(time.perf_counter() - t0)
    base, base_min = statistics.median(times["unsteered"]), min(times["unsteered"])
    print(f"SD1.5 full size, latent {a.size}x{a.size}, cfg 7.5 (batch 2), 1 ddim step, block {a.block}, "
          f"threads={torch.get_num_threads()}, {a.repeats} interleaved runs each")
    print(f"  {'variant':<28} {'median s':>9} {'ratio':>7} {'min s':>8} {'ratio':>7}")
    for name, ts in times.items():
        med, low = statistics.median(ts), min(ts)
        print(f"  {name:<28} {med:9.2f} {med / base:7.3f} {low:8.2f} {low / base_min:7.3f}")


if __name__ == "__main__":
    main()
