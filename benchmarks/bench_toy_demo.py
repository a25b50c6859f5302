"""Wall time of `sae-concepts demo --world toy` (the Toy World loop at the demo's sizes), and the
share of each stage, from one run. The issue's target: <= 5 min on a 2-core CPU.

Usage: python benchmarks/bench_toy_demo.py [--weights FILE] [--out DIR]
(default weights: the shipped ones; ComfyUI must be importable, as for the demo itself).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def main() -> None:
    import conftest  # noqa: F401  (the tests' settings: one torch thread unless OMP_NUM_THREADS is set)
    from sae_concepts.host.comfy_env import import_comfy
    from sae_concepts.host.toyworld.sampling import SHIPPED_WEIGHTS
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", default=str(SHIPPED_WEIGHTS))
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    import_comfy(cpu=True)   # the torchvision stand-in where none works
    from sae_concepts.training.demo.toy_demo import run_toy_demo
    out = Path(a.out or tempfile.mkdtemp(prefix="toy_demo_bench_"))
    t0 = time.perf_counter()
    run_toy_demo(out, weights=Path(a.weights), progress=False)
    total = time.perf_counter() - t0
    stamps = sorted((p.stat().st_mtime, p.name) for p in
                    [out / "acts" / "train" / "prompts.jsonl", out / "acts" / "eval" / "prompts.jsonl",
                     out / "sae_set.safetensors", out / "metrics.json", out / "paper_tables.md"] if p.exists())
    print(f"toy demo: {total / 60:.1f} min wall ({'within' if total <= 300 else 'OVER'} the 5 min target)")
    start = t0 - time.perf_counter() + time.time()
    prev = start
    for ts, name in stamps:
        print(f"  {name:<24} done at {ts - start:6.0f} s ({(ts - prev) / total:.0%} of the run)")
        prev = ts


if __name__ == "__main__":
    main()
