"""Synthetic activations with planted, known structure, for tests and the demo.

Each vector is a sparse non-negative combination of atoms of a random unit-norm dictionary
plus isotropic Gaussian noise, so a correct SAE must recover the atoms as decoder rows.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch


@dataclass
class PlantedDictionary:
    atoms: torch.Tensor        # [n_atoms, d], unit rows
    active_per_vector: int     # atoms per vector
    noise_std: float           # per-coordinate noise std
    offset: torch.Tensor       # [d] constant offset (the pre-bias should find it)

    @classmethod
    def random(cls, d: int, n_atoms: int, active_per_vector: int, noise_std: float = 0.02,
               offset_norm: float = 1.0, subspace_dim: int = 0, seed: int = 0) -> "PlantedDictionary":
        """subspace_dim > 0 puts every atom inside one random subspace of that dimension, so
        latents initialised pointing elsewhere never fire: the setting AuxK exists for."""
        g = torch.Generator().manual_seed(seed)
        if subspace_dim:
            basis = torch.linalg.qr(torch.randn(d, subspace_dim, generator=g)).Q.t()
            atoms = torch.randn(n_atoms, subspace_dim, generator=g) @ basis
        else:
            atoms = torch.randn(n_atoms, d, generator=g)
        atoms /= atoms.norm(dim=1, keepdim=True)
        offset = torch.randn(d, generator=g)
        offset *= offset_norm / offset.norm()
        return cls(atoms, active_per_vector, noise_std, offset)

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """n vectors and their true [n, n_atoms] non-negative codes."""
        n_atoms, d = self.atoms.shape
        scores = torch.rand(n, n_atoms, generator=generator)
        chosen = scores.topk(self.active_per_vector, dim=1).indices
        coeffs = 0.5 + torch.rand(n, self.active_per_vector, generator=generator)  # in [0.5, 1.5)
        code = torch.zeros(n, n_atoms).scatter_(1, chosen, coeffs)
        x = code @ self.atoms + self.offset + self.noise_std * torch.randn(n, d, generator=generator)
        return x, code

    def batches(self, batch_size: int, n_batches: int, seed: int = 1) -> Iterator[torch.Tensor]:
        """A replayable stream: the same seed gives the same batches."""
        g = torch.Generator().manual_seed(seed)
        for _ in range(n_batches):
            yield self.sample(batch_size, g)[0]

    def noise_fvu_floor(self, n: int = 20000, seed: int = 2) -> float:
        """FVU of a perfect reconstruction that leaves only the noise: the best any SAE can do."""
        x, _ = self.sample(n, torch.Generator().manual_seed(seed))
        total = (x - x.mean(0)).pow(2).sum(1).mean().item()
        return self.noise_std**2 * self.atoms.shape[1] / total


def recovered_fraction(atoms: torch.Tensor, W_dec: torch.Tensor, threshold: float = 0.9) -> float:
    """Share of planted atoms that some decoder row matches with cosine >= threshold."""
    a = atoms / atoms.norm(dim=1, keepdim=True)
    w = W_dec / W_dec.norm(dim=1, keepdim=True)
    best = (a @ w.t()).max(dim=1).values
    return (best >= threshold).float().mean().item()
