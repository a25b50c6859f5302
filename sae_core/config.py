"""Configuration of a TopK SAE (what the weights mean, not how they were trained)."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from .errors import ConfigError


@dataclass
class SaeConfig:
    """Shape and encoding rule of a k-sparse autoencoder.

    z = ReLU(TopK(W_enc (x / s - b_pre) + b_lat)),  x_hat = s * (W_dec^T z + b_pre)
    where s is the input scale: one number (1.0 when inputs are not normalised), or with
    `standardise` one per input dimension (divisions and products elementwise).
    """

    d_in: int
    """Width of the activation vectors (1280 for the paper's SD1.x blocks)."""

    n_latents: int = 0
    """Dictionary size n_f. 0 means expansion_factor * d_in."""

    expansion_factor: int = 4
    """Used only when n_latents is 0 (the paper: n_f = 4d)."""

    k: int = 10
    """Active latents per vector (the paper trains 10 and 20)."""

    latent_bias: bool = False
    """SDLens-style bias added inside the TopK. The paper's SAE has none."""

    standardise: bool = False
    """Per-dimension input scale (each dimension's std; b_pre then takes the mean), as Shabalin
    et al. standardise Flux activations, whose dimensions differ in scale by orders of magnitude.
    Decoder rows then live in standardised units; concept directions are mapped back to input
    units wherever they are used (steering, maps)."""

    def __post_init__(self) -> None:
        if self.d_in <= 0:
            raise ConfigError(f"d_in must be positive, got {self.d_in}")
        if self.n_latents == 0:
            self.n_latents = self.expansion_factor * self.d_in
        if self.n_latents <= 0:
            raise ConfigError(f"n_latents must be positive, got {self.n_latents}")
        if not 0 < self.k <= self.n_latents:
            raise ConfigError(f"k must be in [1, n_latents={self.n_latents}] (n_latents = expansion factor x d), "
                              f"got {self.k}")

    def to_dict(self) -> dict:
        d = asdict(self)
        if not d["standardise"]:
            # added later: left out at its default, so files and fingerprints (which hash this dict)
            # of one-scale SAEs stay what they were, and dictionaries built on them still match
            del d["standardise"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "SaeConfig":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})
