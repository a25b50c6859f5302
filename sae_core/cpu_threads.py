"""CPU intra-op threads: results that do not depend on their number, and steps that do not stall.

Thread count and results. Of the ops a training step uses, only one kind gives a result that
depends on torch's intra-op thread count: a reduction of more than 32768 elements
(at::internal::GRAIN_SIZE) to a single value. torch splits it into one partial sum per thread
and adds the partials, so 1 and 2 threads round differently (measured: `x.sum()` of 65536
floats differs in the last bit; the whole loss, and from the second step every weight, then
drifts). Reductions to several values (`.sum(1)`) are split by output, each output summed by
one thread in a fixed order, and the GEMMs, top-k, embedding_bag and CSR products are split by
output rows too: all of those are bitwise equal at any thread count. `thread_stable_sum` is
therefore a sum of rows of a fixed length, then a sum of those sums, never one big reduction.

Thread count and speed. Each op above the grain size is an OpenMP parallel region ending in a
barrier. A small SAE's step is a few dozen such regions of microseconds each; when another
process keeps a core busy, the thread on that core is descheduled and every barrier waits for
its next time slice (milliseconds). Measured on the 2-core dev machine under load: one demo
SAE (d 64, n_f 128, batch 1024, 400 steps) took 13 s with 1 thread and 139 s with 2. So steps
smaller than `PARALLEL_MIN_FLOPS` run on one thread: what threads could save on free cores is
less than what the barriers lose on a busy one. Large steps (the paper's SAEs) keep every thread.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

# Row length of thread_stable_sum's first pass; below the grain size, so each row is one
# thread's serial sum whatever the thread count.
STABLE_SUM_ROW = 4096

# Encoder GEMM work (2 * batch * d * n_f multiply-adds) below which a CPU step runs on one
# thread: ~25-50 ms of single-core GEMM, about what one stalled barrier per op costs a step.
PARALLEL_MIN_FLOPS = 1e9


def thread_stable_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of all elements of t, bitwise the same at any intra-op thread count (differentiable)."""
    flat = t.reshape(-1)
    while flat.numel() > STABLE_SUM_ROW:
        pad = (-flat.numel()) % STABLE_SUM_ROW   # zeros: exact, they do not change any sum
        flat = F.pad(flat, (0, pad)).view(-1, STABLE_SUM_ROW).sum(1)
    return flat.sum()


def step_threads(batch: int, d_in: int, n_latents: int, device: torch.device | str) -> int:
    """Intra-op threads for a training step of this size: all of them for a large step (or off
    the CPU, where they only feed the GPU), one for a small CPU step (see the module note)."""
    if torch.device(device).type != "cpu" or 2 * batch * d_in * n_latents >= PARALLEL_MIN_FLOPS:
        return torch.get_num_threads()
    return 1


@contextlib.contextmanager
def intra_op_threads(n: int):
    """torch's intra-op thread count set to n inside the block (never raised above the current
    one: OMP_NUM_THREADS or torch.set_num_threads stay the ceiling), restored after."""
    before = torch.get_num_threads()
    n = max(1, min(n, before))
    if n != before:
        torch.set_num_threads(n)
    try:
        yield n
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
