"""ITDA dictionaries on planted data: known structure must come out, against naive references."""
from __future__ import annotations

import pytest
import torch

from sae_concepts.sae_core import SAEEntry, SAEInfo, SAESet, load_sae
from sae_concepts.sae_core.errors import ConfigError
from sae_concepts.sae_core.itda import ItdaConfig, ItdaDictionary, build_itda, pursuit, save_itda_set

D = 32


def planted(n_dirs=5, n=600, mix=1, noise=0.01, seed=0):
    """Vectors that are positive mixtures of `mix` of n_dirs planted unit directions, + noise;
    with provenance: prompt = i // 30, pos = i % 30."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(n_dirs, D, generator=g)
    dirs /= dirs.norm(dim=1, keepdim=True)
    which = torch.stack([torch.randperm(n_dirs, generator=g)[:mix] for _ in range(n)])
    coef = 1 + 2 * torch.rand(n, mix, generator=g)
    x = torch.einsum("nm,nmd->nd", coef, dirs[which]) + noise * torch.randn(n, D, generator=g)
    idx = torch.arange(n)
    return dirs, x, idx // 30, idx % 30


def batches(x, prompt, pos, size=100):
    return lambda: ((x[i:i + size], prompt[i:i + size], pos[i:i + size]) for i in range(0, x.shape[0], size))


def naive_pursuit(x, atoms, k, encoder):
    """One vector at a time, as the algorithms are written (non-negative selection)."""
    vals, idxs = [], []
    for v in x:
        support, coef, real = [], torch.zeros(0), []
        resid = v.clone()
        for _ in range(min(k, atoms.shape[0])):
            corr = atoms @ resid
            corr[support] = float("-inf")
            j = int(corr.argmax())
            ok = float(corr[j]) > 0
            support.append(j)
            real.append(ok)
            if encoder == "mp":
                coef = torch.cat([coef, torch.tensor([float(corr[j]) if ok else 0.0])])
                resid = resid - coef[-1] * atoms[j]
            else:
                coef = torch.cat([coef, torch.zeros(1)])
                sel = atoms[support]
                grad = (sel @ resid) * torch.tensor(real, dtype=torch.float32)
                c = grad @ sel
                step = (grad @ grad) / (c @ c).clamp_min(1e-30)
                coef = (coef + step * grad).clamp_min(0)
                resid = v - coef @ sel
        vals.append(coef)
        idxs.append(torch.tensor(support))
    return torch.stack(vals), torch.stack(idxs)


@pytest.mark.parametrize("encoder", ["mp", "gp"])
def test_pursuit_matches_the_naive_reference(encoder):
    g = torch.Generator().manual_seed(1)
    atoms = torch.randn(40, D, generator=g)
    atoms /= atoms.norm(dim=1, keepdim=True)
    x = torch.randn(25, D, generator=g)
    code = pursuit(x, atoms, 6, encoder, chunk=7)   # chunks of 7 rows: the chunking is exercised too
    ref_v, ref_i = naive_pursuit(x, atoms, 6, encoder)
    assert torch.equal(code.indices, ref_i)
    torch.testing.assert_close(code.values, ref_v, rtol=1e-4, atol=1e-5)
    assert (code.values >= 0).all()


def test_one_atom_per_planted_direction_with_right_provenance():
    dirs, x, prompt, pos = planted(mix=1)
    itda, summary = build_itda(batches(x, prompt, pos), D, ItdaConfig(k=4, threshold=0.1, encoder="mp"))
    assert 5 <= itda.n_latents <= 10 and summary["atoms"] == itda.n_latents and summary["vectors_seen"] == 600
    assert (itda.atoms @ dirs.T).max(0).values.min() > 0.99, "every planted direction is an atom"
    torch.testing.assert_close(itda.atoms.norm(dim=1), torch.ones(itda.n_latents))
    for a in range(itda.n_latents):
        p = itda.provenance(a)
        row = int(p["prompt"]) * 30 + int(p["pos"])
        torch.testing.assert_close(itda.atoms[a], x[row] / x[row].norm()), "the atom is its training vector"


@pytest.mark.parametrize("encoder", ["mp", "gp"])
def test_free_growth_reconstructs_every_training_vector_under_the_threshold(encoder):
    dirs, x, prompt, pos = planted(mix=2, n=400, noise=0.05)
    cfg = ItdaConfig(k=8, threshold=0.05, encoder=encoder)
    itda, _ = build_itda(batches(x, prompt, pos), D, cfg, passes=3)
    losses = itda.losses(itda.normalise(x))
    assert float(losses.max()) <= cfg.threshold
    # The atoms span the planted directions (they are mixtures of them).
    q, _ = torch.linalg.qr(itda.atoms.T)
    assert (dirs @ q).norm(dim=1).min() > 0.99
    # decode(encode(x)) is the reconstruction the losses measure.
    err = (x - itda.decode(itda.encode(x))).pow(2).sum(1) / x.pow(2).sum(1)
    torch.testing.assert_close(err, losses, rtol=1e-4, atol=1e-6)


def test_max_size_standardisation_save_load_and_sae_interface(tmp_path):
    dirs, x, prompt, pos = planted(mix=2, n=300)
    x = x * torch.linspace(0.5, 4, D) + 3.0           # uneven scales and an offset
    cfg = ItdaConfig(k=4, threshold=0.05, max_atoms=7, standardise=True)
    itda, summary = build_itda(batches(x, prompt, pos), D, cfg)
    assert itda.n_latents == 7 == summary["atoms"]
    first = x[:100]
    torch.testing.assert_close(itda.mean, first.mean(0))
    torch.testing.assert_close(itda.std, first.std(0))
    # An atom decodes (alone, value 1) to mean + its direction in input units.
    code = itda.encode(x[:5])
    torch.testing.assert_close(itda.decode(code),
                               torch.einsum("nk,nkd->nd", code.values, itda.W_dec[code.indices]) + itda.mean)
    info = SAEInfo(model_family="flux", block="double_blocks.18", t=1.0, cond="cond")
    save_itda_set(tmp_path / "itda.safetensors", [SAEEntry(itda, info)])
    loaded = load_sae(tmp_path / "itda.safetensors")
    e = loaded.select("transformer_blocks.18", 1.0, "cond")
    assert isinstance(e.sae, ItdaDictionary) and e.sae.n_latents == 7 and e.info.block == "double_blocks.18"
    torch.testing.assert_close(e.sae.encode(x[:20]).values, itda.encode(x[:20]).values)
    assert e.sae.provenance(3) == itda.provenance(3)
    # What the steering and concept-map code reads works on it.
    from sae_concepts.sae_core.interventions import activation_addition, concept_map, global_steer, top_concepts
    rows = x[:30]
    ids, strength = top_concepts(e.sae, rows)
    assert ids.shape == (30,) and (strength >= 0).all()
    assert concept_map(e.sae, rows, [int(ids[0])]).shape == (30,)
    assert global_steer(e.sae, rows, [1, 2], 10.0).shape == rows.shape
    assert activation_addition(e.sae, rows, [1], torch.ones(30), 0.8).shape == rows.shape
    # A concept dictionary records and checks the ITDA set's fingerprint as it does an SAE set's.
    from sae_concepts.sae_core.concept_dictionary import ConceptDictionary, SAEConcepts
    d = ConceptDictionary.for_sae_set(loaded, [SAEConcepts("double_blocks.18", 1.0, "cond", {2: {"labels": ["dog"]}})])
    d.check_built_from(loaded)
    assert d.for_sae("transformer_blocks.18", 1.0, "cond").lookup("dog") == [2]


def test_bad_itda_settings_are_refused():
    for kw, msg in (({"k": 0}, "k .* must be positive"), ({"threshold": 1.5}, r"threshold must be in \(0, 1\)"),
                    ({"encoder": "omp"}, "encoder must be one of"), ({"max_atoms": -1}, "max_atoms must be >= 0")):
        with pytest.raises(ConfigError, match=msg):
            ItdaConfig(**kw)
    with pytest.raises(ConfigError, match="width 32 got activations of width 8"):
        build_itda(lambda: iter([(torch.randn(4, 8), torch.zeros(4), torch.zeros(4))]), D, ItdaConfig())
