"""ITDA dictionaries on planted data: known structure must come out, against naive references."""
from __future__ import annotations

import pytest
import torch

from sae_concepts.sae_core import SAEEntry, SAEInfo, load_sae
from sae_concepts.sae_core.errors import ConfigError
from sae_concepts.sae_core.itda import (GRAM_MIN_D, ItdaConfig, ItdaDictionary, build_itda, first_distinct, pursue,
                                        pursuit, save_itda_set)

D = 32


def planted(n_dirs=5, n=600, mix=1, noise=0.01, seed=0, d=D):
    """Vectors that are positive mixtures of `mix` of n_dirs planted unit directions, + noise;
    with provenance: prompt = i // 30, pos = i % 30."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(n_dirs, d, generator=g)
    dirs /= dirs.norm(dim=1, keepdim=True)
    which = torch.stack([torch.randperm(n_dirs, generator=g)[:mix] for _ in range(n)])
    coef = 1 + 2 * torch.rand(n, mix, generator=g)
    x = torch.einsum("nm,nmd->nd", coef, dirs[which]) + noise * torch.randn(n, d, generator=g)
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
@pytest.mark.parametrize("d, with_gram", [(D, False), (D, True), (320, True)])
def test_pursuit_matches_the_naive_reference(encoder, d, with_gram):
    """Also through the Gram matrix: matching pursuit's correlation updates, and gradient pursuit's
    gathered support rows (at d 320 in its steps 1-11, then products over d)."""
    g = torch.Generator().manual_seed(1)
    atoms = torch.randn(40, d, generator=g)
    atoms /= atoms.norm(dim=1, keepdim=True)
    x = torch.randn(25, d, generator=g)
    k = 16 if d > D else 6
    code = pursuit(x, atoms, k, encoder, chunk=7,   # chunks of 7 rows: the chunking is exercised too
                   gram=atoms @ atoms.T if with_gram else None)
    ref_v, ref_i = naive_pursuit(x, atoms, k, encoder)
    assert torch.equal(code.indices, ref_i)
    torch.testing.assert_close(code.values, ref_v, rtol=1e-4, atol=1e-5)
    assert (code.values >= 0).all()


def naive_loss(x, atoms, k, encoder):
    v, i = naive_pursuit(x, atoms, k, encoder)
    return (x - torch.einsum("nk,nkd->nd", v, atoms[i])).pow(2).sum(1) / x.pow(2).sum(1)


@pytest.mark.parametrize("encoder", ["mp", "gp"])
@pytest.mark.parametrize("d, with_gram", [(D, False), (D, True), (320, True)])
def test_pursuit_stopping_under_the_threshold_keeps_every_answer(encoder, d, with_gram):
    """With stop_below, a vector under the threshold may stop early, but the verdict (above or
    not) and the loss of every vector left above are those of the full k steps (also when the
    correlations are carried from step to step and compacted as vectors stop)."""
    dirs, x, _, _ = planted(mix=3, n=200, noise=0.1 * (D / d) ** 0.5, d=d)
    atoms = x[::7] / x[::7].norm(dim=1, keepdim=True)
    full = naive_loss(x, atoms, 8, encoder)
    mid = full.sort().values[99:101]
    thr = float(mid.mean())                         # half above, half under, none at the border
    assert float(mid[1] - mid[0]) > 1e-5
    values, _, loss = pursue(x, atoms, 8, encoder, chunk=50, stop_below=thr,
                             gram=atoms @ atoms.T if with_gram else None)
    assert torch.equal(loss > thr, full > thr)
    torch.testing.assert_close(loss[full > thr], full[full > thr], rtol=1e-4, atol=1e-6)
    assert (loss[full <= thr] <= thr).all()
    # It did stop early: some vectors under the threshold hold fewer than 8 atoms.
    assert ((values > 0).sum(1)[full <= thr] < 8).any()


def test_first_distinct_is_the_sequential_greedy():
    """Rows kept in priority order unless a kept earlier row is within the cosine: the same rows
    as the loop over rows, across blocks and with a room limit."""
    g = torch.Generator().manual_seed(3)
    centres = torch.randn(6, D, generator=g)
    u = centres[torch.randint(0, 6, (300,), generator=g)] + 0.8 * torch.randn(300, D, generator=g)
    u /= u.norm(dim=1, keepdim=True)
    for cos in (0.5, 0.6, 0.7, 0.8):
        close = (u @ u.T) >= cos
        blocked, loop = torch.zeros(300, dtype=torch.bool), []
        for c in range(300):
            if not blocked[c]:
                loop.append(c)
                blocked |= close[c]
        assert 6 < len(loop) < 300, "clusters with several kept rows each: the rounds are exercised"
        assert first_distinct(u, cos, 10**9, block=64).tolist() == loop
        assert first_distinct(u, cos, 5, block=64).tolist() == loop[:5]


def naive_build(x, prompt, pos, cfg, size):
    """ITDA as written, one batch at a time: full k-step pursuit of every vector, those above the
    threshold worst first, each skipped when an atom added from this batch is within the cosine."""
    atoms, src = torch.zeros(0, x.shape[1]), []
    cos = (1 - cfg.threshold) ** 0.5
    for s in range(0, x.shape[0], size):
        xb = x[s:s + size]
        loss = naive_loss(xb, atoms, cfg.k, cfg.encoder) if atoms.shape[0] else torch.ones(xb.shape[0])
        added = []
        for i in sorted(torch.nonzero(loss > cfg.threshold).flatten().tolist(), key=lambda i: -float(loss[i])):
            if cfg.max_atoms and atoms.shape[0] + len(added) >= cfg.max_atoms:
                break
            u = xb[i] / xb[i].norm()
            if all(float(u @ a) < cos for a in added):
                added.append(u)
                src.append((int(prompt[s + i]), int(pos[s + i])))
        if added:
            atoms = torch.cat([atoms, torch.stack(added)])
    return atoms, src


@pytest.mark.parametrize("encoder", ["mp", "gp"])
@pytest.mark.parametrize("d", [D, 2 * GRAM_MIN_D])
def test_build_equals_the_naive_algorithm(encoder, d):
    """At d >= GRAM_MIN_D through the Gram matrix the dictionary keeps and extends as it grows."""
    dirs, x, prompt, pos = planted(n_dirs=8, mix=2, n=400, noise=0.08 * (D / d) ** 0.5, seed=4, d=d)
    for cfg in (ItdaConfig(k=4, threshold=0.05, encoder=encoder), ItdaConfig(k=3, threshold=0.02, encoder=encoder,
                                                                             max_atoms=60)):
        itda, _ = build_itda(batches(x, prompt, pos), d, cfg)
        atoms, src = naive_build(x, prompt, pos, cfg, 100)
        assert 20 < len(src)
        assert [tuple(map(int, p.values())) for p in map(itda.provenance, range(itda.n_latents))] == src
        torch.testing.assert_close(itda.atoms, atoms)
        assert itda._gram is None, "a finished dictionary keeps no Gram matrix"


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
