"""ITDA vs a TopK SAE on the same vectors: build/train time and FVU at equal L0, from one run.

Data: sparse non-negative mixtures of a planted set of directions plus noise (what both methods
are meant to find). The SAE trains `--epochs` passes; ITDA grows in one pass. Figures are ratios
from this one run; absolute seconds depend on the machine and its load.

    python benchmarks/bench_itda.py --d 512 --n 40000 --k 32
"""
from __future__ import annotations

import argparse
import time

import torch

from sae_concepts.sae_core import SaeConfig, TrainConfig, Trainer
from sae_concepts.sae_core.itda import ItdaConfig, build_itda


def data(n: int, d: int, dirs: int, active: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(dirs, d, generator=g)
    basis /= basis.norm(dim=1, keepdim=True)
    which = torch.rand(n, dirs, generator=g).argsort(1)[:, :active]
    coef = torch.rand(n, active, generator=g) * 2
    return torch.einsum("na,nad->nd", coef, basis[which]) + 0.05 * torch.randn(n, d, generator=g)


def fvu(encode, decode, x: torch.Tensor) -> float:
    with torch.no_grad():
        err = sum((x[i:i + 4096] - decode(encode(x[i:i + 4096]))).pow(2).sum().item() for i in range(0, len(x), 4096))
    return err / (x - x.mean(0)).pow(2).sum().item()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--d", type=int, default=512)
    p.add_argument("--n", type=int, default=40000)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--dirs", type=int, default=2048)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--threshold", type=float, default=0.3)
    a = p.parse_args()
    x = data(a.n, a.d, a.dirs, 8)
    batches = lambda: (x[i:i + 4096] for i in range(0, a.n, 4096))   # noqa: E731
    t0 = time.process_time()
    tr = Trainer(SaeConfig(d_in=a.d, expansion_factor=4, k=a.k), TrainConfig(checkpoint_every=0, log_every=10**9))
    sae = tr.fit(b for _ in range(a.epochs) for b in batches())
    t_sae = time.process_time() - t0
    ids = torch.arange(a.n)
    t0 = time.process_time()
    itda, summary = build_itda(lambda: ((x[i:i + 4096], ids[i:i + 4096], ids[i:i + 4096]) for i in range(0, a.n, 4096)),
                               a.d, ItdaConfig(k=a.k, threshold=a.threshold, encoder="gp"))
    t_itda = time.process_time() - t0
    print(f"d={a.d} n={a.n} k={a.k} threads={torch.get_num_threads()}")
    print(f"SAE  n_f={sae.n_latents}: {t_sae:.1f} s ({a.epochs} epochs), FVU {fvu(sae.encode, sae.decode, x):.3f}")
    print(f"ITDA {itda.n_latents} atoms: {t_itda:.1f} s (1 pass, threshold {a.threshold}), "
          f"FVU {fvu(itda.encode, itda.decode, x):.3f} at the same L0")
    print(f"ITDA time / SAE time = {t_itda / t_sae:.3f}")


if __name__ == "__main__":
    main()
