"""Training-step throughput of the TopK SAE at the paper's size, as ratios from one run.

(a) speed-up over a naive dense step (dense [N, n_f] code, dense decode, autograd through
    everything), and
(b) share of the roofline: the time of the one dense product every TopK SAE step must do,
    the encoder's [N, d] x [d, n_f] forward (all pre-activations are needed to pick the top k).
    Everything else in our step (TopK, sparse decode, sparse backward, Adam, decoder
    renormalisation) is overhead on top of it, so 100 % is unreachable.

Usage: python benchmarks/bench_train_step.py [--d 1280] [--n 5120] [--batch 4096] [--k 10 20]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from sae_concepts.sae_core import SaeConfig, TrainConfig, Trainer
from sae_concepts.sae_core.reference import dense_losses


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved(fns, repeats: int) -> list[float]:
    for fn in fns:
        fn()  # warm-up
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            ts.append(time.perf_counter() - t0)
    return [statistics.median(ts) for ts in times]


def naive_step(trainer: Trainer, x: torch.Tensor) -> None:
    sae = trainer.sae
    fvu, _ = dense_losses(sae, x)
    trainer.optimizer.zero_grad(set_to_none=True)
    fvu.backward()
    sae.remove_parallel_decoder_grad()
    trainer.optimizer.step()
    sae.normalise_decoder()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--d", type=int, default=1280)
    p.add_argument("--n", type=int, default=5120)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--k", type=int, nargs="+", default=[10, 20])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--dead-fraction", type=float, default=0.1,
                   help="share of latents marked dead for the AuxK variant of the step")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args(argv)
    dev = torch.device(a.device)
    print(f"device={dev} threads={torch.get_num_threads()} torch={torch.__version__} "
          f"d={a.d} n_f={a.n} batch={a.batch}")
    x = torch.randn(a.batch, a.d, device=dev)
    W = torch.randn(a.n, a.d, device=dev)
    print(f"roofline = the encoder matmul, {2 * a.batch * a.d * a.n / 1e9:.1f} GFLOP, timed beside each step")
    print(f"{'k':>4} {'roofline ms':>12} {'ours ms':>9} {'naive ms':>9} {'naive/ours':>11} {'roofline/ours':>14} "
          f"{'ours+AuxK ms':>13} {'roofline/(ours+AuxK)':>21}")
    for k in a.k:
        tr = Trainer(SaeConfig(d_in=a.d, n_latents=a.n, k=k), TrainConfig(lr=1e-4), device=dev)
        tr.train_step(x)  # initialise (geometric median) outside the timing
        # Interleaved so that drifting machine load hits all three alike.
        roofline, ours, naive = interleaved([lambda: x @ W.t(), lambda: tr.train_step(x),
                                             lambda: naive_step(tr, x)], a.repeats)
        dead = torch.rand(a.n, generator=torch.Generator().manual_seed(0)) < a.dead_fraction
        tr.tokens_since_fired[dead.to(dev)] = tr.dead_after
        aux = timed(lambda: (tr.tokens_since_fired.__setitem__(dead.to(dev), tr.dead_after),
                             tr.train_step(x)), a.repeats)
        print(f"{k:>4} {roofline * 1e3:>12.1f} {ours * 1e3:>9.1f} {naive * 1e3:>9.1f} {naive / ours:>10.2f}x {roofline / ours:>13.0%} "
              f"{aux * 1e3:>13.1f} {roofline / aux:>20.0%}")


if __name__ == "__main__":
    main()
