"""Same inputs and seed give the same SAE at any intra-op thread count; small CPU steps use one thread."""
import hashlib
import os
import subprocess
import sys

import pytest
import torch

from sae_concepts.sae_core import SaeConfig, TrainConfig, Trainer
from sae_concepts.sae_core.cpu_threads import intra_op_threads, step_threads, thread_stable_sum


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_thread_stable_sum_is_bitwise_equal_at_any_thread_count(restore_threads):
    g = torch.Generator().manual_seed(0)
    for n in (7, 4096, 32769, 100_000, 1 << 20):   # both sides of torch's 32768-element grain size
        x = torch.randn(n, generator=g) * 3 + 1
        sums = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            sums.append(thread_stable_sum(x))
        assert all(torch.equal(s, sums[0]) for s in sums), (n, sums)
        assert abs(float(sums[0]) - float(x.double().sum())) <= 1e-5 * float(x.double().abs().sum())
    x = torch.randn(300, 400, generator=g, requires_grad=True)
    thread_stable_sum(x.pow(2)).backward()
    torch.testing.assert_close(x.grad, 2 * x.detach())


def _trainer(seed_data: int):
    # dead_after of one batch: from the second step the unfired latents are dead and AuxK runs.
    return Trainer(SaeConfig(d_in=32, expansion_factor=8, k=4),
                   TrainConfig(lr=3e-3, dead_after=4096, k_aux=64, seed=3))


def test_training_steps_are_bitwise_equal_at_1_and_2_threads(restore_threads):
    """The steps themselves at 1 and 2 threads (train_step, bypassing fit's thread choice), with a
    batch whose losses are sums far above the grain size, with and without AuxK."""
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(40, 32, generator=g)
    batches = [centres[torch.randint(0, 40, (4096,), generator=g)] + 0.1 * torch.randn(4096, 32, generator=g)
               for _ in range(6)]
    one, two = _trainer(0), _trainer(0)
    for step, x in enumerate(batches):
        torch.set_num_threads(1)
        log_one = one.train_step(x)
        torch.set_num_threads(2)
        log_two = two.train_step(x)
        assert log_one == log_two, step
        for (name, a), b in zip(one.sae.state_dict().items(), two.sae.state_dict().values()):
            assert torch.equal(a, b), f"step {step}: {name} differs by {(a - b).abs().max()}"
    assert one.dead_mask().any(), "AuxK never ran: the test would not cover it"


def test_small_cpu_steps_run_on_one_thread_and_threads_are_restored(restore_threads):
    torch.set_num_threads(2)
    assert step_threads(1024, 64, 128, "cpu") == 1                 # the demo's SAEs
    assert step_threads(4096, 1280, 5120, "cpu") == 2              # the paper's
    with intra_op_threads(8) as n:                                 # never above the ceiling
        assert n == 2 and torch.get_num_threads() == 2
    seen = []
    trainer = Trainer(SaeConfig(d_in=16, expansion_factor=2, k=2), TrainConfig(lr=1e-3, log_every=1))
    trainer.fit((torch.randn(256, 16) for _ in range(3)), on_log=lambda e: seen.append(torch.get_num_threads()))
    assert seen == [1, 1, 1] and torch.get_num_threads() == 2


def test_demo_training_gives_the_same_file_at_1_and_2_threads(tmp_path):
    """`sae-concepts train` with the demo's settings, in fresh processes at OMP_NUM_THREADS 1 and 2."""
    from sae_concepts.training.demo.demo import write_split
    write_split(tmp_path / "synthetic", "train", 50, 0, seed=1, with_pictures=False)
    digests = []
    for threads in (1, 2):
        out = tmp_path / f"set_{threads}.safetensors"
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        run = subprocess.run([sys.executable, "-m", "sae_concepts.training.cli", "train", "--quiet",
                              "--shards", str(tmp_path / "synthetic" / "train"), "--out", str(out),
                              "--only", "middle_block.1,t=1,cond", "--expansion-factor", "2", "--k", "1",
                              "--batch-size", "1024", "--shuffle-window", str(1 << 16), "--epochs", "2",
                              "--lr", "3e-3", "--dead-after", "5000", "--k-aux", "32"],
                             env=env, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr[-3000:]
        digests.append(hashlib.sha256(out.read_bytes()).hexdigest())
    assert digests[0] == digests[1]


def test_sae_set_files_are_byte_identical_for_identical_content(tmp_path):
    """safetensors writes the metadata keys in a new order for every file (a Rust HashMap); six saves
    of the same SAE set left as written came out in 3 different byte orders. Ours are sorted."""
    from sae_concepts.sae_core import SAEEntry, SAEInfo, TopKSAE, load_sae, save_sae_set
    torch.manual_seed(0)
    entry = SAEEntry(TopKSAE(SaeConfig(d_in=8, expansion_factor=2, k=2)), SAEInfo(block="middle_block.1", t=1.0, cond="cond"))
    files = [tmp_path / f"set_{i}.safetensors" for i in range(8)]
    for f in files:
        save_sae_set(f, [entry])
    assert len({f.read_bytes() for f in files}) == 1
    assert [e.info.block for e in load_sae(files[0])] == ["middle_block.1"]
