"""Per-dimension standardisation (SaeConfig.standardise): the SAE divides each input dimension by
its own scale, so decoder rows live in standardised units, and every consumer (decode, steering,
concept maps, the file format, `sae-concepts train`) must map them back to input units.
Checked against naive dense computations written out here."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from sae_concepts.sae_core import SAEEntry, SAEInfo, SaeConfig, TopKSAE, TrainConfig, Trainer, save_sae_set
from sae_concepts.sae_core import interventions as iv
from sae_concepts.sae_core.loading import load_sae as load_sae_set
from sae_concepts.sae_core.reference import dense_decode, dense_topk_code
from sae_concepts.sae_core.errors import SAEFileError

D, N_F, K = 24, 96, 4


def standardised_sae(seed=0, scale=None) -> TopKSAE:
    g = torch.Generator().manual_seed(seed)
    sae = TopKSAE(SaeConfig(d_in=D, n_latents=N_F, k=K, standardise=True))
    sae.reset_parameters(g)
    with torch.no_grad():
        sae.W_dec.mul_(0.5 + torch.rand(N_F, 1, generator=g))   # rows of unequal norm, as foreign SAEs have
        sae.b_pre.copy_(0.1 * torch.randn(D, generator=g))
        sae.input_scale.copy_(scale if scale is not None else torch.logspace(-2, 2, D)[torch.randperm(D, generator=g)])
    return sae.eval().requires_grad_(False)


def wide_range_data(n=2048, seed=1) -> torch.Tensor:
    """Sparse combinations of planted directions, each dimension then scaled by 10^-2..10^2 (as Flux's
    residual dimensions differ by orders of magnitude)."""
    g = torch.Generator().manual_seed(seed)
    atoms = torch.randn(32, D, generator=g)
    code = torch.rand(n, 32, generator=g) * (torch.rand(n, 32, generator=g) < 0.1)
    return (code @ atoms + 0.01 * torch.randn(n, D, generator=g)) * torch.logspace(-2, 2, D)


def test_encode_decode_match_the_dense_reference_with_a_scale_per_dimension():
    sae = standardised_sae()
    x = wide_range_data(64)
    z = dense_topk_code(sae, x)
    torch.testing.assert_close(sae.dense_code(sae.encode(x)), z)
    torch.testing.assert_close(sae.decode(sae.encode(x)), dense_decode(sae, z), rtol=1e-4, atol=1e-3)
    # by hand: x_hat = (z W_dec + b_pre) * s, elementwise in s
    torch.testing.assert_close(dense_decode(sae, z), (z @ sae.W_dec + sae.b_pre) * sae.input_scale)


def test_steering_reads_concepts_in_input_units():
    sae = standardised_sae()
    delta = wide_range_data(16, seed=3)
    z = dense_topk_code(sae, delta)
    ids = torch.unique(sae.encode(delta).indices)[:3]
    # a concept's direction in input space is W_dec[i] * s, normalised
    naive_dirs = sae.W_dec[ids] * sae.input_scale
    naive_dirs = naive_dirs / naive_dirs.norm(dim=1, keepdim=True)
    torch.testing.assert_close(sae.concept_vectors(ids), naive_dirs)
    # spatial steer outside the region removes exactly the concepts' part of the decoded Delta
    region = torch.zeros(16)
    removed = iv.spatial_steer(sae, delta, ids.tolist(), region, beta=5.0)
    own = (z[:, ids] @ sae.W_dec[ids]) * sae.input_scale
    torch.testing.assert_close(removed, -own)
    # code values in input units: z_i times ||W_dec[i] * s|| / ||W_dec[i]|| (z_i * s with one scale s)
    unit = (sae.W_dec * sae.input_scale).norm(dim=1) / sae.W_dec.norm(dim=1)
    naive_map = sum(z[:, i] * unit[i] for i in ids.tolist())
    torch.testing.assert_close(iv.concept_map(sae, delta, ids.tolist()), naive_map)
    # global steer with normalisation "none": beta * ||Z_ij|| (input units) * the sum of unit directions
    norms = (z * unit).norm(dim=1)
    torch.testing.assert_close(iv.global_steer(sae, delta, ids.tolist(), 2.0, "none"),
                               2.0 * norms[:, None] * naive_dirs.sum(0))
    # Shabalin et al.'s activation addition steers along the un-standardised direction
    add = iv.activation_addition(sae, delta, ids.tolist(), torch.ones(16), strength=1.0)
    u = (sae.W_dec[ids].sum(0) * sae.input_scale)
    torch.testing.assert_close(add[0], delta.norm(dim=1).mean() * u / u.norm())


def test_one_scale_repeated_per_dimension_steers_as_the_scalar_sae():
    scalar = standardised_sae(seed=4)
    per_dim = standardised_sae(seed=4, scale=torch.full((D,), 3.0))
    scalar_sae = TopKSAE(SaeConfig(d_in=D, n_latents=N_F, k=K))
    scalar_sae.load_state_dict({**{k: v for k, v in scalar.state_dict().items() if k != "input_scale"},
                                "input_scale": torch.tensor(3.0)})
    delta = wide_range_data(16, seed=5)
    ids = torch.unique(scalar_sae.encode(delta).indices)[:2].tolist()
    region = (torch.arange(16) % 2).float()
    for fn in (lambda s: iv.spatial_steer(s, delta, ids, region, 7.0),
               lambda s: iv.global_steer(s, delta, ids, 7.0, "mean"),
               lambda s: iv.concept_map(s, delta, ids),
               lambda s: iv.top_concepts(s, delta)[1],
               lambda s: iv.sdlens_paint(s, torch.rand(N_F, generator=torch.Generator().manual_seed(0)), ids,
                                         region, 2.0)):
        torch.testing.assert_close(fn(per_dim), fn(scalar_sae))


def test_trainer_standardises_each_dimension_from_the_first_batch_at_any_thread_count():
    x = wide_range_data(4096)
    runs = []
    for threads in (1, 2):
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            trainer = Trainer(SaeConfig(d_in=D, n_latents=N_F, k=K, standardise=True),
                              TrainConfig(max_steps=20, log_every=5, checkpoint_every=0), progress=False)
            sae = trainer.fit(iter([x[i:i + 256] for i in range(0, 4096, 256)] * 2))
        finally:
            torch.set_num_threads(before)
        runs.append(sae)
    torch.testing.assert_close(runs[0].input_scale, x[:256].std(dim=0), rtol=1e-5, atol=0)   # the first batch
    for name, value in runs[0].state_dict().items():
        assert torch.equal(value, runs[1].state_dict()[name]), name


def test_standardised_sae_fits_dimensions_of_every_scale():
    """With one scale, the loss is the 10^2 dimensions' and the 10^-2 ones go unexplained; per
    dimension, every dimension counts. FVU per dimension on held-out data, in input units."""
    x, held = wide_range_data(8192), wide_range_data(1024, seed=9)
    fvu_small = {}
    for standardise in (False, True):
        torch.manual_seed(0)
        trainer = Trainer(SaeConfig(d_in=D, n_latents=64, k=8, standardise=standardise),
                          TrainConfig(max_steps=300, log_every=50, checkpoint_every=0), progress=False)
        sae = trainer.fit(iter([x[i:i + 256] for i in range(0, 8192, 256)] * 10))
        err = (sae.decode(sae.encode(held)) - held).pow(2).sum(0) / (held - held.mean(0)).pow(2).sum(0)
        fvu_small[standardise] = err[:6].mean().item()   # the 6 smallest-scale dimensions
    assert fvu_small[True] < 0.5 * fvu_small[False], fvu_small


def test_file_round_trip_and_a_wrong_scale_shape_is_refused(tmp_path):
    sae = standardised_sae()
    path = tmp_path / "std.safetensors"
    save_sae_set(path, [SAEEntry(sae, SAEInfo(block="middle_block.1"))])
    loaded = load_sae_set(path).entries[0].sae
    assert loaded.cfg.standardise and loaded.input_scale.shape == (D,)
    assert torch.equal(loaded.input_scale, sae.input_scale) and torch.equal(loaded.W_dec, sae.W_dec)
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        assert json.loads(f.metadata()["saes"])[0]["normalisation"] == {"kind": "per_dimension"}
    # a file that says standardise but holds one scale: refused, naming the tensor
    from safetensors.torch import load_file, save_file
    tensors = load_file(str(path))
    tensors["sae.0.input_scale"] = torch.tensor(2.0)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata=meta)
    with pytest.raises(SAEFileError, match="sae.0.input_scale"):
        load_sae_set(bad)


def test_train_command_standardise_and_a_changed_setting_is_refused(tmp_path):
    from sae_concepts.training.storage.shards import ShardWriter, activation_key
    x = wide_range_data(512)
    w = ShardWriter(tmp_path / "acts", run_config={"model_family": "sd1"})
    key = activation_key("middle_block.1", 1.0, "cond")
    for i in range(2):
        w.write(i, {f"{key}/acts": x[i * 256:(i + 1) * 256].half(), f"{key}/prompt": torch.full((256,), i),
                    f"{key}/pos": torch.arange(256, dtype=torch.int32)}, {"prompt_ids": [i]})
    cli = [sys.executable, "-m", "sae_concepts.training.cli", "train", "--quiet", "--shards", str(tmp_path / "acts"),
           "--out", str(tmp_path / "sae.safetensors"), "--batch-size", "128", "--shuffle-window", "256", "--k", "4"]
    r = subprocess.run(cli + ["--standardise"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    sae = load_sae_set(tmp_path / "sae.safetensors").entries[0].sae
    assert sae.cfg.standardise and sae.input_scale.shape == (D,)
    r = subprocess.run(cli, capture_output=True, text=True)   # the same run without --standardise
    assert r.returncode == 2 and "--standardise: True then, False now" in r.stderr, r.stderr[-2000:]
