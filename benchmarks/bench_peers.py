"""Our TopK SAE against EleutherAI sparsify (and SAELens where installed): the same tensors in
one process, at 1 and 2 threads.

Speed (d 1280, n_f 5120, batch 4096, k 10 by default; ratio = peer time / our time, so > 1
means ours is faster; every figure is the minimum over --repeats interleaved runs, which is
what survives a busy neighbour core):
  floor      the encoder's forward GEMM [N, d] x [d, n_f] alone: the one dense product every
             TopK step must do; "floor %" = floor / our step.
  step       one training step, plain TopK (no dead latents).
  +AuxK      one step with --dead-fraction of the latents dead (each library's own k_aux:
             ours 256, sparsify d/2).
  encode     inference encoding (what steering and concept maps run), no gradient.
Each peer's step is written as its own trainer does it: sparsify renormalises the decoder,
runs SparseCoder.forward, backward, removes the decoder gradient's parallel part, steps
torch.optim.Adam (what its trainer builds with optimizer="adam" without bitsandbytes) and
updates its dead-latent counters; SAELens runs TopKTrainingSAE.training_forward_pass + Adam.

Quality (--quality-steps > 0): planted data (a dictionary of unit atoms with Zipf-distributed
frequencies, so rare atoms exist, plus an offset and noise), equal tokens for everyone, each
library with its DEFAULT settings (sparsify: its default optimizer, signum, and also its Adam
with its own lr rule); held-out FVU and the share of latents that never fire on held-out data.

Usage: pip install -e '.[bench]'
       python benchmarks/bench_peers.py [--threads 1 2] [--repeats 7] [--quality-steps 300]
       python benchmarks/bench_peers.py --aux-crossover     # dense vs sparse AuxK products
"""
from __future__ import annotations

import argparse
import contextlib
import math
import time

import torch

from sae_concepts.sae_core import SaeConfig, TrainConfig, Trainer, sparse_ops


def min_times(fns: dict, repeats: int) -> dict:
    """Each callable's minimum time over `repeats` rounds, rounds interleaved so that drifting
    load hits every contender alike."""
    for fn in fns.values():
        fn()  # warm-up
    times = {name: math.inf for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name] = min(times[name], time.perf_counter() - t0)
    return times


# ---- data -------------------------------------------------------------------------------
class ZipfPlanted:
    """x = sum of `active` atoms drawn with Zipf(1) frequencies (with replacement), coefficients
    in [0.5, 1.5), + offset + noise. Rare atoms are what leave latents dead in real activations."""

    def __init__(self, d: int, n_atoms: int, active: int, noise_std: float = 0.05, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.atoms = torch.randn(n_atoms, d, generator=g)
        self.atoms /= self.atoms.norm(dim=1, keepdim=True)
        freq = 1 / torch.arange(1, n_atoms + 1, dtype=torch.float64)
        self.cdf = (freq.cumsum(0) / freq.sum()).float()
        self.offset = torch.randn(d, generator=g) * (2.0 / math.sqrt(d))
        self.active, self.noise_std = active, noise_std

    def sample(self, n: int, g: torch.Generator) -> torch.Tensor:
        u = torch.rand(n, self.active, generator=g)
        chosen = torch.searchsorted(self.cdf, u).clamp_max(self.atoms.shape[0] - 1)
        coeffs = 0.5 + torch.rand(n, self.active, generator=g)
        x = torch.nn.functional.embedding_bag(chosen, self.atoms, per_sample_weights=coeffs, mode="sum")
        return x + self.offset + self.noise_std * torch.randn(n, self.atoms.shape[1], generator=g)


# ---- peers ------------------------------------------------------------------------------
def import_sparsify():
    try:
        import os
        os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")
        with contextlib.redirect_stdout(None):
            import sparsify
        return sparsify
    except ImportError:
        return None


def import_saelens():
    try:
        import sae_lens
        return sae_lens
    except ImportError:
        return None


class SparsifyRun:
    """sparsify's SAE and optimiser, stepped as sparsify.trainer.Trainer steps them."""

    def __init__(self, sparsify, d, n, k, optimizer="adam", lr=None, auxk_alpha=0.0, total_steps=None,
                 dead_after=10_000_000, seed=0):
        from sparsify import SparseCoder, SparseCoderConfig
        torch.manual_seed(seed)
        self.sae = SparseCoder(d, SparseCoderConfig(num_latents=n, k=k), device="cpu", dtype=torch.float32)
        if optimizer == "adam":   # sparsify/trainer.py, optimizer="adam", bitsandbytes absent
            from transformers import get_linear_schedule_with_warmup
            self.opt = torch.optim.Adam(self.sae.parameters(), lr=lr or 2e-4 / (n / 2**14) ** 0.5)
            self.sched = get_linear_schedule_with_warmup(self.opt, 1000, total_steps or 10**9)
        else:                     # its default: signum under schedule-free
            from schedulefree import ScheduleFreeWrapper
            from sparsify.sign_sgd import SignSGD
            self.opt = ScheduleFreeWrapper(SignSGD(self.sae.parameters(), lr=lr or 5e-3 / (n / 2**14) ** 0.5),
                                           momentum=0.95)
            self.opt.train()
            self.sched = None
        self.auxk_alpha, self.dead_after = auxk_alpha, dead_after
        self.counts = torch.zeros(n, dtype=torch.int64)
        self.steps = 0

    def step(self, x):
        sae = self.sae
        if self.steps == 0:
            sae.b_dec.data = x.mean(0)
        sae.set_decoder_norm_to_unit_norm()
        dead = self.counts > self.dead_after if self.auxk_alpha > 0 else None
        out = sae(x, dead_mask=dead, total_variance=(x - x.mean(0)).pow(2).sum())
        fired = torch.zeros(self.counts.shape, dtype=torch.bool)
        fired[out.latent_indices.flatten()] = True
        float(out.fvu.detach())   # its trainer logs the loss every step
        (out.fvu + self.auxk_alpha * out.auxk_loss + out.multi_topk_fvu / 8).backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        self.opt.step()
        self.opt.zero_grad()
        if self.sched is not None:
            self.sched.step()
        self.counts += x.shape[0]
        self.counts[fired] = 0
        self.steps += 1

    def finish(self):
        if self.sched is None:
            self.opt.eval()   # schedule-free: evaluate at the averaged weights, as its trainer saves them

    @torch.no_grad()
    def encode(self, x):
        return self.sae.encode(x)

    @torch.no_grad()
    def fvu_and_fired(self, x):
        out = self.sae.encode(x)
        x_hat = self.sae.decode(out.top_acts, out.top_indices)
        return _fvu(x, x_hat), out.top_indices[out.top_acts > 0]


class SaeLensRun:
    """SAELens' TopKTrainingSAE with Adam, as its SAETrainer steps it (no AuxK)."""

    def __init__(self, sae_lens, d, n, k, lr=3e-4):
        from sae_lens.saes.sae import TrainStepInput
        self.TrainStepInput = TrainStepInput
        self.sae = sae_lens.TopKTrainingSAE(sae_lens.TopKTrainingSAEConfig(d_in=d, d_sae=n, k=k, device="cpu"))
        self.opt = torch.optim.Adam(self.sae.parameters(), lr=lr)

    def step(self, x):
        out = self.sae.training_forward_pass(self.TrainStepInput(x, {}, None, 0, False))
        out.loss.backward()
        self.opt.step()
        self.opt.zero_grad()


def _fvu(x, x_hat) -> float:
    return float((x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


# ---- speed ------------------------------------------------------------------------------
def speed(a, sparsify, sae_lens) -> None:
    data = ZipfPlanted(a.d, 4 * a.n, 2 * a.k, seed=0)
    x = data.sample(a.batch, torch.Generator().manual_seed(1))
    W = torch.randn(a.n, a.d)
    dead = torch.rand(a.n, generator=torch.Generator().manual_seed(0)) < a.dead_fraction
    print(f"d={a.d} n_f={a.n} batch={a.batch} k={a.k}; AuxK with {int(dead.sum())} dead latents; "
          f"min of {a.repeats} interleaved repeats; torch {torch.__version__}")
    head = (f"{'thr':>3} {'floor ms':>9} {'ours ms':>8} {'floor %':>8} {'sparsify':>9} {'ratio':>6} | "
            f"{'ours+AuxK':>9} {'sp.+AuxK':>9} {'ratio':>6} | {'enc ours':>8} {'enc sp.':>8} {'ratio':>6}")
    if sae_lens:
        head += f" | {'SAELens':>8} {'ratio':>6}"
    print(head)
    for threads in a.threads:
        torch.set_num_threads(threads)
        ours = Trainer(SaeConfig(d_in=a.d, n_latents=a.n, k=a.k), TrainConfig())
        ours_aux = Trainer(SaeConfig(d_in=a.d, n_latents=a.n, k=a.k), TrainConfig())
        sp = SparsifyRun(sparsify, a.d, a.n, a.k)
        sp_aux = SparsifyRun(sparsify, a.d, a.n, a.k, auxk_alpha=1 / 32)

        def ours_aux_step():
            ours_aux.tokens_since_fired[dead] = ours_aux.dead_after
            ours_aux.train_step(x)

        def sp_aux_step():
            sp_aux.counts[dead] = sp_aux.dead_after + 1
            sp_aux.step(x)

        fns = {"floor": lambda: x @ W.t(), "ours": lambda: ours.train_step(x), "sp": lambda: sp.step(x),
               "ours_aux": ours_aux_step, "sp_aux": sp_aux_step}
        with torch.no_grad():
            fns["enc_ours"] = lambda: ours.sae.encode(x)
            fns["enc_sp"] = lambda: sp.encode(x)
        if sae_lens:
            sl = SaeLensRun(sae_lens, a.d, a.n, a.k)
            fns["sl"] = lambda: sl.step(x)
        t = min_times(fns, a.repeats)
        row = (f"{threads:>3} {t['floor'] * 1e3:>9.0f} {t['ours'] * 1e3:>8.0f} {t['floor'] / t['ours']:>8.0%} "
               f"{t['sp'] * 1e3:>9.0f} {t['sp'] / t['ours']:>5.2f}x | {t['ours_aux'] * 1e3:>9.0f} "
               f"{t['sp_aux'] * 1e3:>9.0f} {t['sp_aux'] / t['ours_aux']:>5.2f}x | {t['enc_ours'] * 1e3:>8.0f} "
               f"{t['enc_sp'] * 1e3:>8.0f} {t['enc_sp'] / t['enc_ours']:>5.2f}x")
        if sae_lens:
            row += f" | {t['sl'] * 1e3:>8.0f} {t['sl'] / t['ours']:>5.2f}x"
        print(row, flush=True)


def aux_crossover(a) -> None:
    """Our AuxK step with the dead-latent products forced dense, then forced sparse."""
    torch.set_num_threads(a.threads[-1])
    data = ZipfPlanted(a.d, 4 * a.n, 2 * a.k, seed=0)
    x = data.sample(a.batch, torch.Generator().manual_seed(1))
    print(f"AuxK step, dense vs index kernels for the dead latents ({a.threads[-1]} threads, k_aux 256)")
    print(f"{'dead':>6} {'aux nnz/(N*n_dead)':>19} {'dense ms':>9} {'sparse ms':>10}")
    saved = sparse_ops.AUX_DENSE_MIN_DENSITY
    try:
        for frac in (0.02, 0.05, 0.1, 0.25, 0.5, 0.9):
            dead = torch.rand(a.n, generator=torch.Generator().manual_seed(0)) < frac
            tr = Trainer(SaeConfig(d_in=a.d, n_latents=a.n, k=a.k), TrainConfig())
            tr.train_step(x)

            def step(threshold):
                sparse_ops.AUX_DENSE_MIN_DENSITY = threshold
                tr.tokens_since_fired[dead] = tr.dead_after
                tr.train_step(x)

            with torch.no_grad():
                ids = dead.nonzero().squeeze(1)
                xc = tr.sae.normalise(x) - tr.sae.b_pre
                aux_pre = (xc @ tr.sae.encoder_weight[ids].t()).topk(min(256, len(ids)), dim=1).values
                density = float((aux_pre > 0).sum()) / (a.batch * len(ids))
            t = min_times({"dense": lambda: step(0.0), "sparse": lambda: step(2.0)}, a.repeats)
            print(f"{frac:>6.0%} {density:>19.3f} {t['dense'] * 1e3:>9.0f} {t['sparse'] * 1e3:>10.0f}", flush=True)
    finally:
        sparse_ops.AUX_DENSE_MIN_DENSITY = saved


# ---- quality ----------------------------------------------------------------------------
def quality(a, sparsify) -> None:
    d, n, k = a.quality_d, 4 * a.quality_d, a.k
    torch.set_num_threads(a.threads[-1])
    data = ZipfPlanted(d, 4 * n, 2 * k, seed=0)
    test = data.sample(16384, torch.Generator().manual_seed(99))
    steps, batch = a.quality_steps, a.quality_batch

    def batches():
        g = torch.Generator().manual_seed(1)
        for _ in range(steps):
            yield data.sample(batch, g)

    print(f"\nquality: planted data d={d} ({4 * n} atoms, Zipf frequencies, {2 * k} per vector), SAE n_f={n} "
          f"k={k}, {steps} steps x {batch} = {steps * batch} tokens, held-out 16384 vectors")
    print(f"{'run':<44} {'FVU':>7} {'dead %':>7} {'s':>6}")
    rows = []

    def report(name, fvu, fired, seconds):
        dead = 1 - torch.zeros(n, dtype=torch.bool).index_fill_(0, fired.unique(), True).float().mean()
        rows.append((name, fvu, float(dead)))
        print(f"{name:<44} {fvu:>7.4f} {float(dead):>7.1%} {seconds:>6.0f}", flush=True)

    t0 = time.perf_counter()
    tr = Trainer(SaeConfig(d_in=d, n_latents=n, k=k), TrainConfig(), expected_steps=steps)
    tr.fit(batches())
    with torch.no_grad():
        out = tr.sae(test)
    report(f"ours, defaults (lr {tr.lr:.2e}, dead after {tr.dead_after})", _fvu(test, out.x_hat),
           out.code.indices[out.code.values > 0], time.perf_counter() - t0)
    if sparsify:
        for opt in ("signum", "adam"):
            t0 = time.perf_counter()
            sp = SparsifyRun(sparsify, d, n, k, optimizer=opt, total_steps=steps)
            for x in batches():
                sp.step(x)
            sp.finish()
            fvu, fired = sp.fvu_and_fired(test)
            report(f"sparsify, defaults ({opt}{', its default' if opt == 'signum' else ''})", fvu, fired,
                   time.perf_counter() - t0)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--d", type=int, default=1280)
    p.add_argument("--n", type=int, default=5120)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--dead-fraction", type=float, default=0.1)
    p.add_argument("--no-speed", action="store_true")
    p.add_argument("--no-saelens", action="store_true", help="leave SAELens out (its step is the slowest)")
    p.add_argument("--aux-crossover", action="store_true")
    p.add_argument("--quality-steps", type=int, default=300, help="0 skips the quality comparison")
    p.add_argument("--quality-d", type=int, default=256)
    p.add_argument("--quality-batch", type=int, default=4096)
    a = p.parse_args(argv)
    sparsify, sae_lens = import_sparsify(), None if a.no_saelens else import_saelens()
    if sparsify is None:
        raise SystemExit("sparsify is not installed: pip install -e '.[bench]' (eai-sparsify)")
    if sae_lens is None and not a.no_saelens:
        print("SAELens not installed: its column is left out")
    if not a.no_speed:
        speed(a, sparsify, sae_lens)
    if a.aux_crossover:
        aux_crossover(a)
    if a.quality_steps:
        quality(a, sparsify)


if __name__ == "__main__":
    main()
