"""Training-step throughput on a GPU: fp32 and bf16, batch 4096 and 16384 (d 1280, n_f 5120, k 10).

For each setting it prints the step time, vectors/s, the encoder GEMM timed alone (the one dense
product a TopK step must do; "floor %" = GEMM / step) and "roofline %": the encoder's useful
FLOPs per step (2 N d n_f) over the step time, as a share of the GPU's measured GEMM peak in that
dtype (a large square matmul timed here, not a spec-sheet figure). With sparsify installed its
step is timed beside ours (AuxK off for both; its Triton decoder if triton is installed).

bf16 runs the whole SAE in bf16 (parameters, Adam state, activations), the way a bf16 run on a
big GPU would; fp32 is what `sae-concepts train` does today.

Usage: python benchmarks/bench_gpu.py [--batches 4096 16384] [--dtypes fp32 bf16] [--repeats 20]
Without CUDA it refuses, unless --device cpu (a smoke run of the same code at small sizes).
"""
from __future__ import annotations

import argparse
import time

import torch

from sae_concepts.sae_core import SaeConfig, TopKSAE

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def min_time(fn, repeats, device) -> float:
    fn()
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def gemm_peak_tflops(device, dtype, repeats, size) -> float:
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    return 2 * size**3 / min_time(lambda: a @ b, repeats, device) / 1e12


class OurStep:
    """What Trainer.train_step does, without its float32 cast, so the SAE can run in bf16."""

    def __init__(self, d, n, k, device, dtype):
        self.sae = TopKSAE(SaeConfig(d_in=d, n_latents=n, k=k)).to(device, dtype)
        params = [p for p in self.sae.parameters() if p.requires_grad]
        self.opt = torch.optim.Adam(params, lr=3e-4, fused=True)

    def __call__(self, x):
        out = self.sae(x)
        self.opt.zero_grad(set_to_none=True)
        out.fvu.backward()
        self.sae.remove_parallel_decoder_grad()
        self.opt.step()
        self.sae.normalise_decoder()


class SparsifyStep:
    def __init__(self, d, n, k, device, dtype):
        from sparsify import SparseCoder, SparseCoderConfig
        self.sae = SparseCoder(d, SparseCoderConfig(num_latents=n, k=k), device=device, dtype=dtype)
        self.opt = torch.optim.Adam(self.sae.parameters(), lr=3e-4)

    def __call__(self, x):
        self.sae.set_decoder_norm_to_unit_norm()
        out = self.sae(x)
        out.fvu.backward()
        self.sae.remove_gradient_parallel_to_decoder_directions()
        self.opt.step()
        self.opt.zero_grad()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--d", type=int, default=1280)
    p.add_argument("--n", type=int, default=5120)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--batches", type=int, nargs="+", default=[4096, 16384])
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=list(DTYPES))
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--peak-size", type=int, default=8192, help="side of the square matmul timed as the GEMM peak")
    p.add_argument("--device", default="cuda")
    p.add_argument("--no-peers", action="store_true")
    a = p.parse_args(argv)
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py: no CUDA device here (torch.cuda.is_available() is False); "
                         "run it on a GPU machine, or pass --device cpu for a smoke run at small sizes")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    sparsify = None
    if not a.no_peers:
        try:
            import sparsify
        except ImportError:
            print("sparsify not installed: its column is left out (pip install -e '.[bench]')")
    print(f"{name}, torch {torch.__version__}; d={a.d} n_f={a.n} k={a.k}; min of {a.repeats} steps")
    print(f"{'dtype':>5} {'batch':>6} {'peak TF/s':>9} {'GEMM ms':>8} {'step ms':>8} {'vectors/s':>10} "
          f"{'floor %':>8} {'roofline %':>10}" + (f" {'sparsify ms':>11} {'ratio':>6}" if sparsify else ""))
    for dname in a.dtypes:
        dtype = DTYPES[dname]
        peak = gemm_peak_tflops(device, dtype, a.repeats, a.peak_size)
        for batch in a.batches:
            g = torch.Generator(device="cpu").manual_seed(0)
            x = torch.randn(batch, a.d, generator=g).to(device, dtype)
            W = torch.randn(a.n, a.d, generator=g).to(device, dtype)
            try:
                gemm = min_time(lambda: x @ W.t(), a.repeats, device)
                step = OurStep(a.d, a.n, a.k, device, dtype)
                ours = min_time(lambda: step(x), a.repeats, device)
            except (RuntimeError, NotImplementedError) as e:   # a kernel without this dtype on this device
                print(f"{dname:>5} {batch:>6} {peak:>9.1f}  failed: {type(e).__name__}: {str(e).splitlines()[0]}")
                continue
            useful = 2 * batch * a.d * a.n / ours / 1e12
            row = (f"{dname:>5} {batch:>6} {peak:>9.1f} {gemm * 1e3:>8.2f} {ours * 1e3:>8.2f} {batch / ours:>10.0f} "
                   f"{gemm / ours:>8.0%} {useful / peak:>10.0%}")
            if sparsify:
                try:
                    peer = SparsifyStep(a.d, a.n, a.k, device, dtype)
                    t = min_time(lambda: peer(x), a.repeats, device)
                    row += f" {t * 1e3:>11.2f} {t / ours:>5.2f}x"
                except (RuntimeError, NotImplementedError) as e:
                    row += f"  sparsify failed: {type(e).__name__}"
            print(row, flush=True)
            del step
            if device.type == "cuda":
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
