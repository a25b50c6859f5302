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
from torch import nn

from .errors import ConfigError, SAEFileError
from .sae import SparseCode

ENCODERS = ("mp", "gp")
FORMAT_NAME = "sae_concepts.itda_set"
FORMAT_VERSION = 1


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


def pursuit(x: torch.Tensor, atoms: torch.Tensor, k: int, encoder: str = "gp", chunk: int = 2048) -> SparseCode:
    """Non-negative pursuit of x [N, d] over unit-norm atoms [n, d]: (values [N, k'], indices [N, k'])
    with k' = min(k, n); an atom is chosen at most once per vector; unused slots hold value 0."""
    n = atoms.shape[0]
    kk = min(k, n)
    out_v = x.new_zeros(x.shape[0], kk)
    out_i = torch.zeros(x.shape[0], kk, dtype=torch.long, device=x.device)
    if n == 0 or kk == 0:
        return SparseCode(out_v, out_i)
    d_in = x.shape[1]
    # Rows per chunk: the correlations [rows, n] and gradient pursuit's gathered atoms [rows, k, d]
    # stay around 2^25 floats (128 MB) whatever the dictionary size.
    chunk = max(1, min(chunk, (1 << 25) // max(n, kk * d_in if encoder == "gp" else 1)))
    for s in range(0, x.shape[0], chunk):
        xs = x[s:s + chunk]
        resid = xs.clone()
        rows = torch.arange(xs.shape[0], device=x.device)
        chosen = torch.zeros(xs.shape[0], n, dtype=torch.bool, device=x.device)
        real = torch.zeros(xs.shape[0], kk, dtype=torch.bool, device=x.device)   # picked with corr > 0
        idx = torch.zeros(xs.shape[0], kk, dtype=torch.long, device=x.device)
        val = xs.new_zeros(xs.shape[0], kk)
        for step in range(kk):
            corr = (resid @ atoms.T).masked_fill(chosen, float("-inf"))
            best, j = corr.max(dim=1)
            real[:, step] = best > 0
            idx[:, step] = j
            chosen[rows, j] = True
            if encoder == "mp":
                val[:, step] = torch.where(real[:, step], best, torch.zeros_like(best))
                resid = resid - val[:, step:step + 1] * atoms[j]
            else:
                sel = atoms[idx[:, :step + 1]]                                  # [rows, s, d]
                g = torch.einsum("nsd,nd->ns", sel, resid).masked_fill(~real[:, :step + 1], 0.0)
                c = torch.einsum("ns,nsd->nd", g, sel)
                step_size = (g * g).sum(1) / (c * c).sum(1).clamp_min(1e-30)
                val[:, :step + 1] = (val[:, :step + 1] + step_size[:, None] * g).clamp_min(0)
                resid = xs - torch.einsum("ns,nsd->nd", val[:, :step + 1], sel)
        out_v[s:s + chunk], out_i[s:s + chunk] = val, idx
    return SparseCode(out_v, out_i)


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
        return pursuit(self.normalise(x), self.atoms, k or self.k, self.itda_cfg.encoder)

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

    def provenance(self, atom: int) -> dict:
        """Where atom `atom` came from: the prompt id and token position of its training vector."""
        return {"prompt": int(self.prompt[atom]), "pos": int(self.pos[atom])}

    # ---- building ---------------------------------------------------------------------------
    def losses(self, xn: torch.Tensor) -> torch.Tensor:
        """||x - x_hat||^2 / ||x||^2 per vector of the normalised batch xn."""
        code = pursuit(xn, self.atoms, self.k, self.itda_cfg.encoder)
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
        loss = self.losses(xn)
        above = torch.nonzero(loss > self.itda_cfg.threshold).flatten()
        if not above.numel():
            return 0
        order = above[torch.argsort(loss[above], descending=True)]
        unit = xn[order] / norms[order, None]
        close = (unit @ unit.T) >= (1 - self.itda_cfg.threshold) ** 0.5
        room = self.itda_cfg.max_atoms - self.n_latents if self.itda_cfg.max_atoms else order.numel()
        blocked = torch.zeros(order.numel(), dtype=torch.bool)
        accepted: list[int] = []
        for c in range(order.numel()):
            if len(accepted) >= room:
                break
            if blocked[c]:
                continue
            accepted.append(c)
            blocked |= close[c]
        idx = torch.tensor(accepted)
        self.atoms = torch.cat([self.atoms, unit[idx].to(self.atoms.dtype)])
        self.prompt = torch.cat([self.prompt, prompt[order[idx]].long()])
        self.pos = torch.cat([self.pos, pos[order[idx]].long()])
        return len(accepted)


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
