"""Shards: atomic writing, resume bookkeeping, corruption errors, streaming with bounded memory;
the train command end to end on planted data."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from sae_concepts.sae_core import TrainConfig, load_sae
from sae_concepts.sae_core.synthetic import PlantedDictionary, recovered_fraction
from sae_concepts.training.storage.shards import (ShardError, ShardSet, ShardWriter, activation_key,
                                          stream_batches)
from sae_concepts.training.train.train import TrainCommandConfig, train_saes

KEY = activation_key("middle_block.1", 1.0, "cond")


def write_planted(root, n_shards=6, per_shard=512, d=16, seed=0, planted=None):
    planted = planted or PlantedDictionary.random(d, 32, 3, seed=seed)
    w = ShardWriter(root, rank=0, run_config={"model_family": "sd1", "d": d})
    g = torch.Generator().manual_seed(seed + 1)
    for i in range(n_shards):
        x, _ = planted.sample(per_shard, g)
        w.write(i, {f"{KEY}/acts": x.half(), f"{KEY}/prompt": torch.full((per_shard,), i, dtype=torch.int64),
                    f"{KEY}/pos": torch.arange(per_shard, dtype=torch.int32)}, {"prompt_ids": [i]})
    return planted


def test_stream_covers_every_vector_once_and_is_deterministic(tmp_path):
    write_planted(tmp_path, n_shards=5, per_shard=100)
    s = ShardSet.open(tmp_path)
    assert s.keys() == [KEY] and s.vectors(KEY) == 500
    a = list(stream_batches(s, KEY, batch_size=64, window=150, seed=3))
    b = list(stream_batches(s, KEY, batch_size=64, window=150, seed=3))
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and len(a) == len(b)
    allv = torch.cat(a)
    assert allv.shape[0] == 500 and allv.dtype == torch.float32
    ref = torch.cat([s.read(sh, KEY)["acts"] for sh in s.shards]).float()
    ua, ca = torch.unique(allv, dim=0, return_counts=True)
    ur, cr = torch.unique(ref, dim=0, return_counts=True)
    assert torch.equal(ua, ur) and torch.equal(ca, cr)
    # two ranks split the shards between them
    r0 = torch.cat(list(stream_batches(s, KEY, 64, 150, seed=3, rank=0, world=2)))
    r1 = torch.cat(list(stream_batches(s, KEY, 64, 150, seed=3, rank=1, world=2)))
    assert r0.shape[0] + r1.shape[0] == 500


def test_writer_resume_and_config_mismatch(tmp_path):
    write_planted(tmp_path, n_shards=3)
    w = ShardWriter(tmp_path, rank=0, run_config={"model_family": "sd1", "d": 16})
    assert w.done == {0, 1, 2}
    with pytest.raises(ShardError, match="other settings"):
        ShardWriter(tmp_path, rank=0, run_config={"model_family": "sd1", "d": 32})
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_corrupted_or_missing_shard_is_a_clear_error(tmp_path):
    write_planted(tmp_path, n_shards=2)
    s = ShardSet.open(tmp_path)
    f = tmp_path / s.shards[1]["file"]
    f.write_bytes(f.read_bytes()[:-10])
    with pytest.raises(ShardError, match=r"shard_r000_00001.safetensors is corrupted"):
        list(stream_batches(s, KEY, 64))
    f.unlink()
    with pytest.raises(ShardError, match="missing; rerun collect"):
        list(stream_batches(s, KEY, 64))
    with pytest.raises(ShardError, match="no manifest"):
        ShardSet.open(tmp_path / "nothing")
    with pytest.raises(ShardError, match="not writable"):
        ShardWriter("/proc/sae_concepts_cannot_write")


def test_train_command_recovers_planted_atoms_and_resumes(tmp_path):
    planted = write_planted(tmp_path / "acts", n_shards=12, per_shard=2048, d=16)
    cmd = TrainCommandConfig(shards=str(tmp_path / "acts"), out=str(tmp_path / "set.safetensors"),
                             expansion_factor=4, k=3, batch_size=256, shuffle_window=4096, epochs=6)
    train = TrainConfig(lr=3e-3, dead_after=20_000, k_aux=8, checkpoint_every=50)
    entries = train_saes(cmd, train, progress=False)
    loaded = load_sae(tmp_path / "set.safetensors")
    assert len(loaded) == 1 and loaded.entries[0].info.block == "middle_block.1"
    assert loaded.entries[0].info.t == 1.0 and loaded.entries[0].info.cond == "cond"
    assert loaded.entries[0].info.training["vectors_seen"] == 12 * 2048 * 6
    assert recovered_fraction(planted.atoms, loaded.entries[0].sae.W_dec) >= 0.9
    # A second run finds the finished checkpoint and returns the same SAE without retraining.
    again = train_saes(cmd, train, progress=False)
    assert torch.equal(again[0].sae.W_dec, entries[0].sae.W_dec)


PEAK = textwrap.dedent("""
    import resource, sys, torch
    from sae_concepts.training.storage.shards import ShardSet, stream_batches
    s = ShardSet.open(sys.argv[1])
    n = 0
    for b in stream_batches(s, s.keys()[0], 1024, window=8192, seed=0):
        n += b.shape[0]
    print(n, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
""")


def test_streaming_peak_memory_does_not_grow_with_data(tmp_path):
    """6x more data on disk, about the same peak memory: the reader holds a bounded window only.
    (Below ~10 shards the window itself is not yet full, so the comparison starts there.)"""
    planted = PlantedDictionary.random(256, 64, 3, seed=0)
    peaks = {}
    for n_shards in (10, 60):
        root = tmp_path / str(n_shards)
        write_planted(root, n_shards=n_shards, per_shard=4096, d=256, planted=planted)
        out = subprocess.run([sys.executable, "-c", PEAK, str(root)], capture_output=True, text=True, check=True)
        n, kb = map(int, out.stdout.split())
        assert n == n_shards * 4096
        peaks[n_shards] = kb
    data_mb = 60 * 4096 * 256 * 2 / 2**20    # 120 MiB of fp16 on disk for the large set
    assert peaks[60] - peaks[10] < 0.1 * data_mb * 1024, peaks


DDP = textwrap.dedent("""
    import os, sys, torch, torch.distributed as dist
    from sae_concepts.sae_core import TrainConfig
    from sae_concepts.training.train.train import TrainCommandConfig, train_saes
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    entries = train_saes(TrainCommandConfig(shards=sys.argv[1], out=sys.argv[2], k=3, batch_size=256,
                                            shuffle_window=1024), TrainConfig(lr=1e-3, checkpoint_every=0),
                         progress=False)
    torch.save(entries[0].sae.state_dict(), sys.argv[3] + f"_{dist.get_rank()}.pt")
    dist.destroy_process_group()
""")


def test_data_parallel_training_with_two_gloo_ranks_and_unequal_shards(tmp_path):
    """torchrun-style DDP on CPU: 3 shards split 2 / 1 between the ranks, so one rank has twice the
    batches; training must stop together (no hang) with identical weights on both ranks."""
    write_planted(tmp_path / "acts", n_shards=3, per_shard=1024, d=16)
    script = tmp_path / "ddp.py"
    script.write_text(DDP)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29541",
           str(script), str(tmp_path / "acts"), str(tmp_path / "set.safetensors"), str(tmp_path / "w")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    w0, w1 = (torch.load(tmp_path / f"w_{i}.pt", weights_only=True) for i in (0, 1))
    for name in w0:
        assert torch.equal(w0[name], w1[name]), name
    info = load_sae(tmp_path / "set.safetensors").entries[0].info
    assert info.training["steps"] == 4   # the smaller rank's 1024 vectors / 256 per batch
    assert info.training["vectors_seen"] == 2 * 4 * 256
