"""Overhead of ConceptMapPreview's live concept map against ComfyUI's own step preview.

Full-size SD1.5 U-Net (random weights, ComfyUI's own classes), a 1280 x 5120 SAE at the block,
cfg 7.5 (batch 2), ConceptMapPreview sampling `--steps` steps (at_percent 1). Both variants send
one preview per step through ComfyUI's progress hook, JPEG-encoded as the server does:
  - latent preview: live_preview off, ComfyUI's latent2rgb previewer (its default without TAESD),
  - live map: live_preview on (the SAE code of the step's Delta, coloured, over latent2rgb).
Prints the time ratio, measured interleaved in one run. Needs ComfyUI (see README).

Usage: python benchmarks/bench_live_map.py [--repeats 3] [--size 64] [--steps 4]
"""
from __future__ import annotations

import argparse
import io
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
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--block", default="middle_block.1")
    a = p.parse_args(argv)
    import conftest  # noqa: F401  (the tests' settings: one torch thread unless OMP_NUM_THREADS is set)
    from sae_concepts.host.comfy_env import import_comfy
    from random_models import build_random_sd1
    import_comfy()   # the torchvision stand-in where none works
    import comfy.utils
    import latent_preview
    from comfy.cli_args import LatentPreviewMethod
    from sae_concepts.nodes.concept_map_preview import ConceptMapPreview
    from sae_concepts.sae_core import SAEEntry, SAEInfo, SAESet, SaeConfig, TopKSAE

    latent_preview.set_preview_method(LatentPreviewMethod.Latent2RGB.value)
    sent = []

    def hook(value, total, preview, node_id=None):   # what the server does with a preview: encode it
        if preview is not None:
            fmt, image, max_size = preview
            buf = io.BytesIO()
            image.save(buf, format=fmt, quality=95)
            sent.append(len(buf.getvalue()))
    comfy.utils.set_progress_bar_global_hook(hook)

    model = build_random_sd1(tiny=False)
    sae = TopKSAE(SaeConfig(d_in=1280, n_latents=5120, k=10))
    sae.reset_parameters(torch.Generator().manual_seed(0))
    s = SAESet([SAEEntry(sae.eval().requires_grad_(False), SAEInfo(block=a.block, cond="both"))])
    g = torch.Generator().manual_seed(0)
    pos = [[torch.randn(1, 77, 768, generator=g), {}]]
    neg = [[torch.zeros(1, 77, 768), {}]]
    latent = {"samples": torch.zeros(1, 4, a.size, a.size)}

    def run(live: bool):
        ConceptMapPreview.execute(model, s, pos, neg, latent, 0, a.steps, 7.5, "ddim", "normal", 1.0, a.block,
                                  True, 10, live_preview=live)

    variants = {"latent preview": False, "live concept map": True}
    for live in variants.values():
        run(live)   # warm-up: model load, first-call allocations
    times = {k: [] for k in variants}
    for _ in range(a.repeats):
        for name, live in variants.items():
            sent.clear()
            t0 = time.perf_counter()
            run(live)
            times[name].append(time.perf_counter() - t0)
            assert len(sent) == a.steps, f"{name}: {len(sent)} previews for {a.steps} steps"
    base, base_min = statistics.median(times["latent preview"]), min(times["latent preview"])
    print(f"SD1.5 full size, latent {a.size}x{a.size}, cfg 7.5 (batch 2), {a.steps} ddim steps, block {a.block}, "
          f"SAE 1280 x 5120, threads={torch.get_num_threads()}, {a.repeats} interleaved runs each")
    print(f"  {'variant':<20} {'median s':>9} {'ratio':>7} {'min s':>8} {'ratio':>7}")
    for name, ts in times.items():
        med, low = statistics.median(ts), min(ts)
        print(f"  {name:<20} {med:9.2f} {med / base:7.3f} {low:8.2f} {low / base_min:7.3f}")


if __name__ == "__main__":
    main()
