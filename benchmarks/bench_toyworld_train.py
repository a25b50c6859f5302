"""Speed of a Toy World training step (`sae-concepts toyworld train`), as ratios from one run.

The floor is the shipped recipe's set-up: batch 16 on one CPU thread. Against it: two CPU threads,
and, where CUDA is available, the GPU at batch 16 and 64 with batches drawn ahead by worker
processes (`--device cuda --workers N`). Each row trains a fresh run for a few warm-up steps,
then times `--steps` more of the loop `train()` runs (drawing the batch or waiting for a worker's,
forward, backward, update, EMA; the loss is read back every step, so a GPU step is finished when
timed; checkpoints and the log are left out), and prints seconds per step and images per second.

Usage: python benchmarks/bench_toyworld_train.py [--steps 15] [--workers 8]
(ComfyUI must be importable, as for `toyworld train`.)
"""
from __future__ import annotations

import argparse
import time

WARMUP = 3


def time_steps(device: str, threads: int, batch: int, workers: int, steps: int) -> float:
    """Seconds per training step of a fresh run, timed after WARMUP steps, in one session (the
    batch workers, if any, already running): the loop `train()` runs, minus checkpoints and log."""
    import torch
    from sae_concepts.training.toyworld.train import ToyTrainConfig, ToyTrainer, step_batches
    torch.set_num_threads(threads)
    cfg = ToyTrainConfig(out="unused", steps=WARMUP + steps, batch_size=batch, lr=8e-4, threads=threads,
                         device=device, workers=workers)
    trainer = ToyTrainer(cfg)
    batches = step_batches(cfg, 0, WARMUP + steps, len(trainer.alphas_cumprod), trainer.model_cfg)
    try:
        for _ in range(WARMUP):
            trainer.train_step(next(batches))
        t0 = time.perf_counter()
        for _ in range(steps):
            trainer.train_step(next(batches))   # reads the loss back: a GPU step is finished here
        return (time.perf_counter() - t0) / steps
    finally:
        batches.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=15, help="timed steps per row")
    ap.add_argument("--workers", type=int, default=8, help="batch-drawing processes for the GPU rows")
    a = ap.parse_args()
    import torch
    from sae_concepts.host.comfy_env import import_comfy
    cuda = torch.cuda.is_available()
    import_comfy(cpu=not cuda)
    rows = [("cpu, 1 thread (the recipe), batch 16", "cpu", 1, 16, 0),
            ("cpu, 2 threads, batch 16", "cpu", 2, 16, 0)]
    if cuda:
        rows += [(f"cuda, batch 16, {a.workers} workers", "cuda", 1, 16, a.workers),
                 (f"cuda, batch 64, {a.workers} workers", "cuda", 1, 64, a.workers)]
    floor = None
    print(f"Toy World training step, {a.steps} timed steps per row (torch {torch.__version__}"
          f"{', ' + torch.cuda.get_device_name() if cuda else ', no CUDA here'}):")
    for name, device, threads, batch, workers in rows:
        s = time_steps(device, threads, batch, workers, a.steps)
        floor = floor or s / batch
        print(f"  {name:<40} {s:7.3f} s/step  {batch / s:7.1f} images/s  "
              f"x{floor / (s / batch):.2f} the floor's images/s")


if __name__ == "__main__":
    main()
