"""Inference-Time Decomposition of Activations (ITDA, Leask et al. 2025): a dictionary of real
activation vectors, grown greedily, with pursuit as its encoder.

The dictionary is unit-norm copies of training vectors (in the normalised space: per-dimension
standardised when asked, as EleutherAI sparsify's ITDA), each keeping where it came from: the
prompt id and the token position of its image, while the (block, t, cond) it belongs to is the
dictionary's own (SAEInfo). A vector whose reconstruction by pursuit over the current dictionary
leaves more than `threshold` of its energy unexplained (||x - x_hat||^2 / ||x||^2) is added as an
atom, until `max_atoms`.

Encoders (both non-negative, like sparsify's, so codes read as SAE codes do: concept maps,
steering): matching pursuit (k steps: the atom with the largest positive correlation with the
residual, its correlation as coefficient) and gradient pursuit (Blumensath & Davies: the same
selection, then one exact line-search gradient step on all selected coefficients, clipped at 0).

`ItdaDictionary` has the interface the rest of the code reads from a TopKSAE (encode -> SparseCode,
decode, W_dec rows as concept directions in input units, b_pre, input_scale, k, n_latents, d_in),
so an SAEEntry may hold one: evaluate, the concept dictionary, the concept map and the steer
nodes take it unchanged.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .cpu_threads import PARALLEL_MIN_FLOPS, intra_op_threads
from .errors import ConfigError, SAEFileError
from .sae import SparseCode

ENCODERS = ("mp", "gp")
FORMAT_NAME = "sae_concepts.itda_set"
FORMAT_VERSION = 1
# Pursuit over the Gram matrix G = atoms @ atoms.T: the residual's correlations with every atom
# from rows of G (memory-bound gathers) instead of a [rows, d] x [d, n] product per step (2d flops
# per entry). Measured on this project's CPU, one thread, [2048, 5000] correlations: the product
# takes ~0.21 d ms; gradient pursuit's gather of a support of s rows (an embedding bag, its
# output allocated, subtracted from <atoms, x>) ~29 + 3.5 s ms; matching pursuit's update from one
# row of G ~12 ms. So G is kept from d = GRAM_MIN_D (a whole build at d 64 was 25 % slower with
# it, keeping G included; at d 512 1.8x faster for gradient pursuit, 1.4x for matching pursuit)
# up to GRAM_MAX_ATOMS atoms (n^2 floats: 256 MB), and gradient pursuit gathers while
# (s + GRAM_BAG_OFFSET) * GRAM_SUPPORT_PER_D < d, then multiplies.
GRAM_MIN_D = 128
GRAM_MAX_ATOMS = 8192
GRAM_SUPPORT_PER_D = 16
GRAM_BAG_OFFSET = 8


@dataclass
class ItdaConfig:
    k: int = 32
    """Target L0: pursuit steps per vector (sparsify's Flux ITDA: 32-64)."""

    threshold: float = 0.1
    """Add a vector as an atom when ||x - x_hat||^2 / ||x||^2 exceeds this (0.1-0.6 typical)."""

    max_atoms: int = 0
    """Largest dictionary (0 = no limit)."""

    encoder: str = "gp"
    """mp (matching pursuit) or gp (gradient pursuit)."""

    standardise: bool = False
    """Per-dimension standardisation (mean and std of the first batch), as sparsify's ITDA."""

    def to_dict(self) -> dict:
        return asdict(self)

    def __post_init__(self) -> None:
        if self.k <= 0:
            raise ConfigError(f"ITDA k (target L0) must be positive, got {self.k}")
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"ITDA threshold must be in (0, 1), got {self.threshold}")
        if self.max_atoms < 0:
            raise ConfigError(f"ITDA max_atoms must be >= 0 (0 = no limit), got {self.max_atoms}")
        if self.encoder not in ENCODERS:
            raise ConfigError(f"ITDA encoder must be one of {ENCODERS}, got {self.encoder!r}")


def pursuit(x: torch.Tensor, atoms: torch.Tensor, k: int, encoder: str = "gp", chunk: int = 2048,
            gram: torch.Tensor | None = None) -> SparseCode:
    """Non-negative pursuit of x [N, d] over unit-norm atoms [n, d]: (values [N, k'], indices [N, k'])
    with k' = min(k, n); an atom is chosen at most once per vector; unused slots hold value 0.
    `gram` (atoms @ atoms.T) lets the steps update correlations without a product over d."""
    values, indices, _ = pursue(x, atoms, k, encoder, chunk=chunk, gram=gram)
    return SparseCode(values, indices)


def pursue(x: torch.Tensor, atoms: torch.Tensor, k: int, encoder: str = "gp", chunk: int = 2048,
           gram: torch.Tensor | None = None, stop_below: float | None = None):
    """pursuit's (values, indices) and each vector's ||x - x_hat||^2 / ||x||^2.

    With `stop_below`, a vector leaves the pursuit as soon as its loss is at most stop_below (and,
    for matching pursuit, once no atom correlates positively with its residual: nothing more can
    change): what ITDA's growth asks is only "under the threshold within k atoms?", and the loss
    never rises along a pursuit (matching pursuit removes c^2 per step; gradient pursuit takes an
    exact line-search step, whose clip at 0 could in principle undo some of it: never seen here,
    and the tests compare with the full pursuit), so the answer and the loss of every vector left
    above are those of the full k steps. The codes of stopped vectors hold fewer than k atoms.

    Cost: one [rows, d] x [d, n] product per chunk, then per step only the vectors still pursued
    (compacted as others stop); the atoms chosen so far are masked by a scatter of at most k
    entries per row, not an [N, n] mask. With `gram` (atoms @ atoms.T) the correlations of the
    residual with every atom are updated without a product over d: matching pursuit subtracts
    v * G[j]; gradient pursuit recomputes c0 - sum_s val_s G[idx_s] (an embedding bag over the
    support) while the support is small against d (GRAM_SUPPORT_PER_D), then multiplies."""
    n_rows, d_in = x.shape
    n = atoms.shape[0]
    kk = min(k, n)
    out_v = x.new_zeros(n_rows, kk)
    out_i = torch.zeros(n_rows, kk, dtype=torch.long, device=x.device)
    energy = x.pow(2).sum(1).clamp_min(1e-30)
    if n == 0 or kk == 0:
        return out_v, out_i, x.pow(2).sum(1) / energy
    out_loss = x.new_zeros(n_rows)
    mp = encoder == "mp"
    # Steps 1 .. bag_steps - 1 gather the support's rows of G (see GRAM_SUPPORT_PER_D).
    bag_steps = 0 if gram is None or mp else \
        min(kk, max(0, (d_in - 1) // GRAM_SUPPORT_PER_D + 1 - GRAM_BAG_OFFSET))
    # Rows per chunk: the correlations [rows, n] and gradient pursuit's gathered atoms [rows, k, d]
    # stay around 2^25 floats (128 MB) whatever the dictionary size.
    chunk = max(1, min(chunk, (1 << 25) // max(n, kk * d_in if not mp else 1)))
    threads = torch.get_num_threads()
    try:
        _pursue_chunks(x, atoms, kk, mp, gram, stop_below, chunk, bag_steps, energy, out_v, out_i, out_loss, threads)
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
    return out_v, out_i, out_loss


def _pursue_chunks(x, atoms, kk, mp, gram, stop_below, chunk, bag_steps, energy, out_v, out_i, out_loss,
                   threads: int) -> None:
    """pursue's work, `chunk` rows at a time, into out_v, out_i and out_loss. The [rows, n]
    correlations and gradient pursuit's gathered support live in buffers allocated once per call:
    a fresh tensor of that size per op costs more than the op (measured, [2048, 5000] floats on
    this project's CPU: a - b 26 ms into a new tensor, 6 ms into a buffer). `threads`: the most
    CPU threads a step may use."""
    n, d_in = atoms.shape
    rows_max = min(chunk, x.shape[0])
    corr_buf, spare = x.new_empty(rows_max, n), x.new_empty(rows_max, n)   # spare: scratch, compaction target
    c0 = x.new_empty(rows_max, n) if bag_steps > 1 else None               # <atoms, x> while the bag is used
    sel_buf = x.new_empty(rows_max * kk * d_in) if not mp else None
    keep_corr = mp and gram is not None                                   # corr carried from step to step
    minus_inf = float("-inf")
    for s in range(0, x.shape[0], chunk):
        xs = x[s:s + chunk]
        xx = energy[s:s + chunk]
        loc = torch.arange(xs.shape[0], device=x.device)             # live rows' places in this chunk
        resid = xs.clone()
        real = torch.zeros(xs.shape[0], kk, dtype=torch.bool, device=x.device)   # picked with corr > 0
        idx = torch.zeros(xs.shape[0], kk, dtype=torch.long, device=x.device)
        val = xs.new_zeros(xs.shape[0], kk)
        corr = torch.mm(xs, atoms.T, out=corr_buf[:xs.shape[0]])   # <atoms, residual>, chosen ones at -inf
        if c0 is not None:
            c0[:xs.shape[0]].copy_(corr)
        for step in range(kk):
            r = xs.shape[0]
            # A step is a dozen ops over [r, n]: on one CPU thread unless its product is large, so
            # that a busy neighbour core cannot stall every op's barrier (cpu_threads.py; the
            # results are the same). Steps shrink as vectors stop, so this is decided per step.
            want = threads if 2 * r * d_in * n >= PARALLEL_MIN_FLOPS else 1
            if x.device.type == "cpu" and want != torch.get_num_threads():
                torch.set_num_threads(want)
            if step and not keep_corr:
                corr = corr_buf[:r]
                if step < bag_steps:
                    torch.index_select(c0, 0, loc, out=corr)
                    corr.sub_(F.embedding_bag(idx[:, :step], gram, per_sample_weights=val[:, :step], mode="sum"))
                else:
                    torch.mm(resid, atoms.T, out=corr)
                g_old = corr.gather(1, idx[:, :step]) if not mp else None   # <atom, residual> on the support
                corr.scatter_(1, idx[:, :step], minus_inf)                  # an atom at most once
            best, j = corr.max(dim=1)
            ok = best > 0
            real[:, step] = ok
            idx[:, step] = j
            if mp:
                v = torch.where(ok, best, torch.zeros_like(best))
                val[:, step] = v
                resid.addcmul_(atoms[j], v[:, None], value=-1)
                if keep_corr:   # <atoms, resid - v a_j> = corr - v G[j]
                    corr.addcmul_(torch.index_select(gram, 0, j, out=spare[:r]), v[:, None], value=-1)
                    corr.scatter_(1, j[:, None], minus_inf)
            else:
                sel = torch.index_select(atoms, 0, idx[:, :step + 1].reshape(-1),
                                         out=sel_buf[:r * (step + 1) * d_in].view(r * (step + 1), d_in))
                sel = sel.view(r, step + 1, d_in)                            # the support's atoms
                g = (torch.cat([g_old, best[:, None]], 1) if step else best[:, None]).masked_fill(
                    ~real[:, :step + 1], 0.0)
                c = torch.einsum("ns,nsd->nd", g, sel)
                step_size = (g * g).sum(1) / (c * c).sum(1).clamp_min(1e-30)
                val[:, :step + 1] = (val[:, :step + 1] + step_size[:, None] * g).clamp_min(0)
                resid = xs - torch.einsum("ns,nsd->nd", val[:, :step + 1], sel)
            if stop_below is None or step == kk - 1:
                continue
            loss = resid.pow(2).sum(1) / xx
            done = loss <= stop_below
            if mp:
                done |= ~ok
            if not bool(done.any()):
                continue
            rows = loc[done] + s
            out_v[rows], out_i[rows], out_loss[rows] = val[done], idx[done], loss[done]
            keep = torch.nonzero(~done).flatten()
            if not keep.numel():
                break
            xs, xx, loc, resid, real, idx, val = (t[keep] for t in (xs, xx, loc, resid, real, idx, val))
            if keep_corr:   # compacted into the spare buffer, which becomes the live one
                corr = torch.index_select(corr, 0, keep, out=spare[:keep.numel()])
                corr_buf, spare = spare, corr_buf
        else:
            rows = loc + s
            out_v[rows], out_i[rows] = val, idx
            out_loss[rows] = resid.pow(2).sum(1) / xx


class ItdaDictionary(nn.Module):
    """Atoms [n, d] (unit norm, normalised space) with provenance; reads like a TopKSAE."""

    def __init__(self, d_in: int, cfg: ItdaConfig, atoms: torch.Tensor | None = None,
                 prompt: torch.Tensor | None = None, pos: torch.Tensor | None = None,
                 mean: torch.Tensor | None = None, std: torch.Tensor | None = None):
        super().__init__()
        self.itda_cfg = cfg
        self._d = d_in
        self.register_buffer("atoms", atoms if atoms is not None else torch.zeros(0, d_in))
        self.register_buffer("prompt", prompt if prompt is not None else torch.zeros(0, dtype=torch.long))
        self.register_buffer("pos", pos if pos is not None else torch.zeros(0, dtype=torch.long))
        self.register_buffer("mean", mean if mean is not None else torch.zeros(d_in))
        self.register_buffer("std", std if std is not None else torch.ones(d_in))
        self.register_buffer("input_scale", torch.ones(()))
        self._gram, self._gram_key = None, None

    # ---- what the rest of the code reads from an SAE ----------------------------------------
    @property
    def cfg(self) -> ItdaConfig:
        """The settings it was built with (what a fingerprint hashes beside the atoms)."""
        return self.itda_cfg

    @property
    def d_in(self) -> int:
        return self._d

    @property
    def n_latents(self) -> int:
        return self.atoms.shape[0]

    @property
    def k(self) -> int:
        return self.itda_cfg.k

    @property
    def W_dec(self) -> torch.Tensor:
        """Atom i as a direction in input units (the atom un-standardised)."""
        return self.atoms * self.std

    @property
    def b_pre(self) -> torch.Tensor:
        return self.mean

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (x.to(self.atoms.dtype) - self.mean) / self.std

    def encode(self, x: torch.Tensor, k: int | None = None) -> SparseCode:
        if x.ndim != 2 or x.shape[1] != self.d_in:
            raise ValueError(f"ITDA dictionary expects activations of shape [N, {self.d_in}], got {list(x.shape)}")
        k = k or self.k
        return pursuit(self.normalise(x), self.atoms, k, self.itda_cfg.encoder, gram=self.gram(x.shape[0], k))

    def decode(self, code: SparseCode) -> torch.Tensor:
        if self.n_latents == 0:
            return self.mean.expand(code.values.shape[0], -1).clone()
        return torch.einsum("nk,nkd->nd", code.values, self.atoms[code.indices]) * self.std + self.mean

    def dense_code(self, code: SparseCode) -> torch.Tensor:
        z = code.values.new_zeros(code.values.shape[0], self.n_latents)
        return z.scatter_add_(1, code.indices, code.values)

    def concept_vectors(self, ids=None) -> torch.Tensor:
        w = self.W_dec if ids is None else self.W_dec[torch.as_tensor(ids, device=self.atoms.device)]
        return w / w.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    # W_dec is already in input units (atoms un-standardised) and input_scale is 1, so the TopKSAE
    # methods that map standardised units to input units are identities here.
    def latent_scales(self) -> torch.Tensor:
        return self.input_scale

    def to_input_space(self, rows: torch.Tensor) -> torch.Tensor:
        return rows

    def decoder_rows_in_input_units(self, ids: torch.Tensor) -> torch.Tensor:
        return self.W_dec[ids]

    def provenance(self, atom: int) -> dict:
        """Where atom `atom` came from: the prompt id and token position of its training vector."""
        return {"prompt": int(self.prompt[atom]), "pos": int(self.pos[atom])}

    # ---- building ---------------------------------------------------------------------------
    def gram(self, rows: int = 0, k: int = 0, keep: bool = False) -> torch.Tensor | None:
        """atoms @ atoms.T for a pursuit of `rows` vectors with k steps, or None where it would not
        pay: below GRAM_MIN_D, above GRAM_MAX_ATOMS atoms, or where it costs more (n^2 d products)
        than it saves (about rows k n d), unless it is already kept. `keep` (growing) keeps it
        while the atoms stay the same and grow extends it; build_itda drops it at the end, so a
        finished dictionary holds no n^2 matrix (a loaded set may have many dictionaries)."""
        n = self.n_latents
        if not 0 < n <= GRAM_MAX_ATOMS or self.d_in < GRAM_MIN_D:
            return None
        key = (self.atoms.data_ptr(), n, self.atoms.device, self.atoms.dtype)
        if self._gram_key == key:
            return self._gram
        if not keep and rows * k < 2 * n:
            return None
        g = self.atoms @ self.atoms.T
        if keep:
            self._gram, self._gram_key = g, key
        return g

    def drop_gram(self) -> None:
        self._gram, self._gram_key = None, None

    def losses(self, xn: torch.Tensor) -> torch.Tensor:
        """||x - x_hat||^2 / ||x||^2 per vector of the normalised batch xn (k pursuit steps)."""
        code = pursuit(xn, self.atoms, self.k, self.itda_cfg.encoder, gram=self.gram(xn.shape[0], self.k))
        if self.n_latents == 0:
            x_hat = torch.zeros_like(xn)
        else:
            x_hat = torch.einsum("nk,nkd->nd", code.values, self.atoms[code.indices])
        return (xn - x_hat).pow(2).sum(1) / xn.pow(2).sum(1).clamp_min(1e-30)

    def full(self) -> bool:
        return bool(self.itda_cfg.max_atoms) and self.n_latents >= self.itda_cfg.max_atoms

    @torch.no_grad()
    def grow(self, x: torch.Tensor, prompt: torch.Tensor, pos: torch.Tensor) -> int:
        """Add the vectors of one batch that the dictionary reconstructs worse than the threshold,
        worst first, skipping a vector when one already added from this batch explains it alone
        (cosine >= sqrt(1 - threshold)); returns the number of atoms added. A skipped vector is
        then under the threshold too: pursuit's first step takes an atom at least that close,
        and later steps never increase the residual."""
        if self.n_latents == 0 and self.itda_cfg.standardise:
            self.mean = x.mean(0)
            self.std = x.std(0).clamp_min(1e-6) if x.shape[0] > 1 else torch.ones_like(self.mean)
        xn = self.normalise(x)
        norms = xn.norm(dim=1)
        keep = norms > 1e-12 * max(1.0, float(norms.max()) if norms.numel() else 1.0)
        xn, prompt, pos, norms = xn[keep], prompt[keep], pos[keep], norms[keep]
        if self.full() or not xn.shape[0]:
            return 0
        # Only "above the threshold within k atoms?" matters here, and the loss of those above:
        # a vector leaves the pursuit once it is under (see pursue).
        thr = self.itda_cfg.threshold
        _, _, loss = pursue(xn, self.atoms, self.k, self.itda_cfg.encoder, gram=self.gram(keep=True),
                            stop_below=thr)
        above = torch.nonzero(loss > thr).flatten()
        if not above.numel():
            return 0
        order = above[torch.argsort(loss[above], descending=True, stable=True)]
        unit = xn[order] / norms[order, None]
        room = self.itda_cfg.max_atoms - self.n_latents if self.itda_cfg.max_atoms else order.numel()
        idx = first_distinct(unit, (1 - thr) ** 0.5, room)
        new = unit[idx].to(self.atoms.dtype)
        old_gram = self.gram(keep=True)
        atoms = torch.cat([self.atoms, new])
        if old_gram is not None and atoms.shape[0] <= GRAM_MAX_ATOMS:
            # Extend G by the new rows and columns instead of recomputing n^2 d products.
            n = old_gram.shape[0]
            cross = new @ atoms.T
            g = old_gram.new_empty(atoms.shape[0], atoms.shape[0])
            g[:n, :n], g[n:], g[:n, n:] = old_gram, cross, cross[:, :n].T
            self._gram = g
            self._gram_key = (atoms.data_ptr(), atoms.shape[0], atoms.device, atoms.dtype)
        else:
            self.drop_gram()
        self.atoms = atoms
        self.prompt = torch.cat([self.prompt, prompt[order[idx]].long()])
        self.pos = torch.cat([self.pos, pos[order[idx]].long()])
        return int(idx.numel())


def first_distinct(unit: torch.Tensor, cos: float, room: int, block: int = 2048) -> torch.Tensor:
    """Rows of `unit` (unit vectors, in priority order) that the sequential greedy keeps: row c is
    kept when no kept row before it has cosine >= cos with it; at most `room`, ascending.

    Without a loop over rows: within a block, rounds decide every row whose earlier neighbours
    are all decided (kept if none of them was kept; a row next to a newly kept one is dropped),
    which is exactly the sequential answer (the lexicographically first maximal independent set);
    a block's rows are first checked against the rows kept from earlier blocks."""
    m = unit.shape[0]
    kept: list[torch.Tensor] = []
    n_kept = 0
    kept_units = unit[:0]
    for b in range(0, m, block):
        if n_kept >= room:
            break
        u = unit[b:b + block]
        undecided = torch.ones(u.shape[0], dtype=torch.bool, device=u.device)
        if kept_units.shape[0]:
            undecided &= ~((u @ kept_units.T) >= cos).any(1)
        close = (u @ u.T) >= cos
        # The rounds are small boolean ops: one CPU thread (cpu_threads.py: a busy neighbour core
        # stalls every op's barrier; measured 6x slower here with two threads).
        with intra_op_threads(1):
            close.fill_diagonal_(False)
            earlier = torch.ones_like(close).tril_(-1)          # [c, c']: c' comes before c
            new_kept = torch.zeros_like(undecided)
            while bool(undecided.any()):
                live = torch.nonzero(undecided).flatten()
                sub = close[live][:, live]
                free = ~(sub & earlier[live][:, live]).any(1)      # no undecided neighbour before it
                take = live[free]
                new_kept[take] = True
                undecided[live] = ~free & ~(sub & free[None, :]).any(1)
        take = torch.nonzero(new_kept).flatten()[:room - n_kept]
        kept.append(take + b)
        n_kept += take.numel()
        kept_units = torch.cat([kept_units, u[take]])
    return torch.cat(kept) if kept else torch.zeros(0, dtype=torch.long, device=unit.device)


def build_itda(batches, d_in: int, cfg: ItdaConfig, passes: int = 1, progress=None) -> tuple[ItdaDictionary, dict]:
    """Grow a dictionary over `batches` (an iterable factory: called once per pass, yielding
    (x [n, d], prompt [n], pos [n])). Returns (dictionary, summary with atoms and seconds)."""
    itda = ItdaDictionary(d_in, cfg)
    start = time.perf_counter()
    vectors = 0
    for p in range(passes):
        for x, prompt, pos in batches():
            if x.shape[1] != d_in:
                raise ConfigError(f"ITDA of width {d_in} got activations of width {x.shape[1]}")
            itda.grow(x.float(), prompt, pos)
            vectors += x.shape[0] if p == 0 else 0
            if progress is not None:
                progress(x.shape[0], itda.n_latents)
            if itda.full():
                break
    itda.drop_gram()
    return itda.eval(), {"atoms": itda.n_latents, "vectors_seen": vectors,
                         "seconds": round(time.perf_counter() - start, 3), **asdict(cfg)}


def save_itda_set(path, entries) -> None:
    """One safetensors file, tensors `itda.<i>.<name>`, metadata {format, format_version, itdas: [{config, info}]}."""
    from safetensors.torch import save_file

    from .atomic import atomic_path
    tensors, described = {}, []
    for i, e in enumerate(entries):
        for name in ("atoms", "prompt", "pos", "mean", "std"):
            tensors[f"itda.{i}.{name}"] = getattr(e.sae, name).detach().contiguous().cpu()
        described.append({"config": asdict(e.sae.itda_cfg), "info": e.info.to_dict(), "d": e.sae.d_in})
    meta = {"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION), "itdas": json.dumps(described)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def is_itda(meta: dict) -> bool:
    return meta.get("format") == FORMAT_NAME


def load_itda(path, meta: dict, tensors: dict):
    from .sae_set import SAEEntry, SAEInfo, SAESet
    from .validation import check_tensor, require_keys
    if meta.get("format_version") != str(FORMAT_VERSION):
        raise SAEFileError(path, f"ITDA format_version {meta.get('format_version')!r} is not supported "
                                 f"(this version reads {FORMAT_VERSION})")
    try:
        described = json.loads(meta["itdas"])
    except (KeyError, json.JSONDecodeError) as e:
        raise SAEFileError(path, f"metadata 'itdas' is missing or not JSON: {e}") from e
    entries = []
    for i, desc in enumerate(described):
        try:
            cfg, info, d = ItdaConfig(**desc["config"]), SAEInfo.from_dict(desc["info"]), int(desc["d"])
        except (KeyError, TypeError, ValueError) as e:
            raise SAEFileError(path, f"ITDA #{i}: bad config/info metadata: {e}") from e
        names = [f"itda.{i}.{n}" for n in ("atoms", "prompt", "pos", "mean", "std")]
        require_keys(path, tensors, names)
        n = tensors[names[0]].shape[0]
        t = {name.rsplit(".", 1)[1]: tensors[name] for name in names}
        itda = ItdaDictionary(d, cfg, atoms=check_tensor(path, names[0], t["atoms"], (n, d)).float(),
                              prompt=check_tensor(path, names[1], t["prompt"], (n,)).long(),
                              pos=check_tensor(path, names[2], t["pos"], (n,)).long(),
                              mean=check_tensor(path, names[3], t["mean"], (d,)).float(),
                              std=check_tensor(path, names[4], t["std"], (d,)).float())
        if (itda.std <= 0).any():
            raise SAEFileError(path, f"ITDA #{i}: std must be positive")
        entries.append(SAEEntry(itda.eval(), info))
    return SAESet(entries, source=str(path))
