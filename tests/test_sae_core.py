"""The TopK SAE against a naive dense reference, and the trainer on planted structure."""
import pytest
import torch

from sae_concepts.sae_core import SaeConfig, TopKSAE, TrainConfig, Trainer, TrainingError, sparse_ops
from sae_concepts.sae_core.geometric_median import geometric_median
from sae_concepts.sae_core.reference import dense_decode, dense_losses, dense_topk_code
from sae_concepts.sae_core.synthetic import PlantedDictionary, recovered_fraction


def random_sae(d=24, n=96, k=5, latent_bias=True, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    sae = TopKSAE(SaeConfig(d_in=d, n_latents=n, k=k, latent_bias=latent_bias), dtype=dtype)
    with torch.no_grad():
        sae.encoder_weight.normal_()
        if latent_bias:
            sae.latent_bias.normal_()
        sae.b_pre.normal_()
        sae.input_scale.fill_(1.7)
    return sae


def test_sparse_encode_decode_match_dense_reference(monkeypatch):
    monkeypatch.setattr(sparse_ops, "ENCODE_BLOCK_ELEMENTS", 96 * 64)   # blocks of 64 rows, the last partial
    sae = random_sae(dtype=torch.float32)
    x = torch.randn(300, 24)
    code = sae.encode(x)
    z = dense_topk_code(sae, x)
    torch.testing.assert_close(sae.dense_code(code), z)
    with torch.no_grad():   # the blocked path (no autograd) gives the same code
        blocked = sae.encode(x)
    torch.testing.assert_close(sae.dense_code(blocked), z)
    torch.testing.assert_close(sae.decode(code), dense_decode(sae, z), rtol=1e-5, atol=1e-5)
    assert code.values.shape == (300, 5) and (code.values >= 0).all()


@pytest.mark.parametrize("aux", ["none", "dense", "sparse"])
@pytest.mark.parametrize("latent_bias", [True, False])
def test_gradients_match_dense_reference(aux, latent_bias, monkeypatch):
    """The hand-written backward against autograd through the naive dense SAE: every parameter
    and the input, with AuxK's dead-latent products done densely and through the index kernels,
    and with the reconstruction and the code values used in the loss as well."""
    monkeypatch.setattr(sparse_ops, "AUX_DENSE_MIN_DENSITY", {"dense": 0.0, "sparse": 2.0}.get(aux, 1 / 6))
    monkeypatch.setattr(sparse_ops, "ENCODE_BLOCK_ELEMENTS", 96 * 10)   # blocks of 10 rows, the last partial
    sae = random_sae(latent_bias=latent_bias)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 24, dtype=torch.float64, generator=g).requires_grad_()
    w_hat = torch.randn(64, 24, dtype=torch.float64, generator=g)
    dead = torch.zeros(96, dtype=torch.bool)
    dead[::4] = True
    k_aux = 0 if aux == "none" else 8
    out = sae(x, dead.nonzero().squeeze(1) if k_aux else None, k_aux)
    (out.fvu + 0.5 * out.auxk_loss + 0.1 * (out.x_hat * w_hat).sum() + 0.2 * out.code.values.pow(2).sum()).backward()
    ours = {n: p.grad.clone() for n, p in sae.named_parameters() if p.requires_grad}
    ours_x = x.grad.clone()
    sae.zero_grad()
    x.grad = None
    fvu, aux_loss = dense_losses(sae, x, dead if k_aux else None, k_aux)
    z = dense_topk_code(sae, x)
    (fvu + 0.5 * aux_loss + 0.1 * (dense_decode(sae, z) * w_hat).sum() + 0.2 * z.pow(2).sum()).backward()
    torch.testing.assert_close(out.fvu, fvu)
    torch.testing.assert_close(out.auxk_loss, aux_loss)
    if k_aux:
        assert aux_loss > 0
    assert set(ours) == {n for n, p in sae.named_parameters() if p.requires_grad}
    for name, p in sae.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(ours[name], p.grad, rtol=1e-9, atol=1e-12, msg=name)
    torch.testing.assert_close(ours_x, x.grad, rtol=1e-9, atol=1e-12, msg="input")


@pytest.mark.parametrize("aux_density", [0.0, 2.0])   # AuxK products dense, then through index kernels
def test_training_steps_are_bitwise_equal_at_1_and_2_threads_above_gemm_threading(aux_density, monkeypatch):
    """Big enough that the GEMMs, embedding bags and sampled products split across threads
    (test_cpu_threads covers a small SAE); a third of the latents held dead so AuxK runs."""
    monkeypatch.setattr(sparse_ops, "AUX_DENSE_MIN_DENSITY", aux_density)
    monkeypatch.setattr(sparse_ops, "ENCODE_BLOCK_ELEMENTS", 384 * 300)   # 7 encoder blocks per batch
    before = torch.get_num_threads()
    planted = PlantedDictionary.random(d=96, n_atoms=256, active_per_vector=4, subspace_dim=24, seed=0)
    batches = list(planted.batches(2048, 3, seed=1))
    runs = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            tr = Trainer(SaeConfig(d_in=96, n_latents=384, k=8), TrainConfig(lr=1e-3, dead_after=2048, k_aux=64))
            for x in batches:
                tr.tokens_since_fired[::3] = tr.dead_after
                assert tr.train_step(x)["auxk_loss"] > 0
            runs.append(tr)
    finally:
        torch.set_num_threads(before)
    for (name, a), b in zip(runs[0].sae.state_dict().items(), runs[1].sae.state_dict().values()):
        assert torch.equal(a, b), name


def test_default_lr_and_dead_threshold_scale_and_paper_settings():
    """lr follows sparsify's 2e-4 / sqrt(n_f / 2^14); the dead threshold is a tenth of the run
    (at most 10M) once the batch size is known; `paper` restores 1e-4 and 10M."""
    cfg = SaeConfig(d_in=16, n_latents=2**14 // 4, k=2)
    tr = Trainer(cfg, TrainConfig(max_steps=50))
    assert tr.lr == pytest.approx(4e-4) and tr.optimizer.param_groups[0]["lr"] == pytest.approx(4e-4)
    assert tr.dead_after == 10_000_000   # batch size not seen yet
    tr.train_step(torch.randn(256, 16))
    assert tr.dead_after == 50 * 256 // 10
    assert Trainer(cfg, TrainConfig()).dead_after == 10_000_000            # run length unknown
    paper = Trainer(cfg, TrainConfig(max_steps=50, paper=True))
    paper.train_step(torch.randn(256, 16))
    assert (paper.lr, paper.dead_after) == (1e-4, 10_000_000)
    explicit = Trainer(cfg, TrainConfig(lr=3e-3, dead_after=77, paper=True))
    assert (explicit.lr, explicit.dead_after) == (3e-3, 77)


def test_latent_bias_is_frozen_when_disabled():
    sae = TopKSAE(SaeConfig(d_in=8, n_latents=16, k=2))
    assert not sae.latent_bias.requires_grad
    tr = Trainer(SaeConfig(d_in=8, n_latents=16, k=2), TrainConfig(lr=1e-2))
    tr.fit(torch.randn(64, 8) for _ in range(5))
    assert torch.count_nonzero(tr.sae.latent_bias) == 0


def test_decoder_rows_stay_unit_norm_and_parallel_grad_is_removed():
    sae = random_sae(dtype=torch.float32)
    sae.normalise_decoder()
    out = sae(torch.randn(32, 24))
    out.fvu.backward()
    sae.remove_parallel_decoder_grad()
    parallel = (sae.W_dec.grad * sae.W_dec).sum(1)
    assert parallel.abs().max() < 1e-6 * sae.W_dec.grad.abs().max()   # float32 rounding of the projection
    tr = Trainer(SaeConfig(d_in=16, n_latents=64, k=4), TrainConfig(lr=1e-2))
    tr.fit(torch.randn(128, 16) * 5 for _ in range(20))
    torch.testing.assert_close(tr.sae.W_dec.norm(dim=1), torch.ones(64))


def test_tied_init_and_geometric_median():
    sae = TopKSAE(SaeConfig(d_in=8, n_latents=32, k=2))
    assert torch.equal(sae.encoder_weight, sae.W_dec)
    # Median of points on a line with an outlier stays with the bulk, unlike the mean.
    pts = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [100.0, 0.0], [1.0, 0.001]])
    med = geometric_median(pts)
    assert abs(med[0] - 1.0) < 0.05 and pts.mean(0)[0] > 20
    with pytest.raises(ValueError):
        geometric_median(torch.zeros(0, 3))


def test_planted_dictionary_is_recovered():
    """The trainer learns, not just runs: decoder rows find the planted atoms.

    FVU bound: the "oracle" SAE whose encoder and decoder are the true dictionary (and whose
    pre-bias is the true offset) reads codes with a matched filter; atoms are not orthogonal,
    so it has interference error. A trained SAE must at least match that oracle (it can beat
    it by learning an unmixing encoder); it can never go below the noise floor.
    """
    torch.manual_seed(0)
    planted = PlantedDictionary.random(d=32, n_atoms=64, active_per_vector=3, noise_std=0.01, seed=0)
    tr = Trainer(SaeConfig(d_in=32, n_latents=128, k=3),
                 TrainConfig(lr=3e-3, dead_after=100_000, log_every=50, seed=0))
    sae = tr.fit(planted.batches(512, 1500, seed=1))
    assert recovered_fraction(planted.atoms, sae.W_dec, 0.9) >= 0.9
    oracle = TopKSAE(SaeConfig(d_in=32, n_latents=64, k=3))
    with torch.no_grad():
        oracle.W_dec.copy_(planted.atoms)
        oracle.encoder_weight.copy_(planted.atoms)
        oracle.b_pre.copy_(planted.offset)
    x, _ = planted.sample(20_000, torch.Generator().manual_seed(99))
    with torch.no_grad():
        fvu, oracle_fvu = sae(x).fvu.item(), oracle(x).fvu.item()
    assert planted.noise_fvu_floor() < fvu < oracle_fvu, (fvu, oracle_fvu)
    assert tr.history[-1]["l0"] == pytest.approx(3.0)


def test_auxk_revives_dead_latents():
    """Atoms live in a 16-d subspace of 64-d space, so many randomly initialised latents never
    win the TopK. The AuxK loss must leave fewer of them dead than a run without it."""
    planted = PlantedDictionary.random(d=64, n_atoms=128, active_per_vector=3, noise_std=0.01,
                                       subspace_dim=16, seed=0)
    dead = {}
    for alpha in (0.0, 1 / 32):
        tr = Trainer(SaeConfig(d_in=64, n_latents=128, k=3),
                     TrainConfig(lr=3e-3, dead_after=12_800, auxk_alpha=alpha, k_aux=32, seed=0))
        tr.fit(planted.batches(256, 600, seed=1))
        dead[alpha] = tr.summary()["dead_fraction"]
    assert dead[0.0] > 0.1, "the setting must produce dead latents for the comparison to mean anything"
    assert dead[1 / 32] < 0.75 * dead[0.0], dead


def test_training_is_deterministic_and_logs_metrics(tmp_path):
    planted = PlantedDictionary.random(d=16, n_atoms=32, active_per_vector=2, seed=3)
    runs = []
    for i in range(2):
        tr = Trainer(SaeConfig(d_in=16, n_latents=64, k=2), TrainConfig(lr=1e-3, seed=7, log_every=5),
                     log_path=tmp_path / f"log{i}.jsonl")
        runs.append(tr.fit(planted.batches(128, 20)))
    for a, b in zip(runs[0].state_dict().values(), runs[1].state_dict().values()):
        assert torch.equal(a, b)
    lines = (tmp_path / "log0.jsonl").read_text().splitlines()
    assert len(lines) == 4
    assert {"fvu", "l0", "dead_fraction", "auxk_loss", "vectors_seen"} <= set(eval(lines[-1]))


def test_nan_batch_is_a_clear_error():
    tr = Trainer(SaeConfig(d_in=8, n_latents=16, k=2))
    bad = torch.randn(32, 8)
    bad[3, 2] = float("nan")
    with pytest.raises(TrainingError, match="NaN"):
        tr.fit([torch.randn(32, 8), bad])


def test_wrong_width_is_a_clear_error():
    sae = TopKSAE(SaeConfig(d_in=8, n_latents=16, k=2))
    with pytest.raises(ValueError, match=r"\[N, 8\].*\[4, 9\]"):
        sae.encode(torch.randn(4, 9))
