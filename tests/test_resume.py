"""A training run killed half-way (SIGKILL, mid-write possibly) and resumed ends with the same
weights as an uninterrupted run with the same seed."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from safetensors import safe_open

from sae_concepts.sae_core import SaeConfig, TrainConfig, Trainer, TrainingError
from sae_concepts.sae_core.synthetic import PlantedDictionary

STEPS = 120
SAE_CFG = dict(d_in=24, n_latents=96, k=4)
TRAIN_CFG = dict(lr=2e-3, seed=11, dead_after=2000, k_aux=12, checkpoint_every=1, log_every=4)

SCRIPT = textwrap.dedent(f"""
    import sys, time, torch
    from sae_concepts.sae_core import SaeConfig, TrainConfig, Trainer
    from sae_concepts.sae_core.synthetic import PlantedDictionary
    torch.set_num_threads(1)
    planted = PlantedDictionary.random(d=24, n_atoms=48, active_per_vector=3, seed=5)
    tr = Trainer(SaeConfig(**{SAE_CFG!r}), TrainConfig(max_steps={STEPS}, **{TRAIN_CFG!r}),
                 checkpoint=sys.argv[1])
    tr.fit(planted.batches(64, 10_000, seed=6), on_log=lambda e: time.sleep(0.05))
""")


def checkpoint_step(path):
    try:
        with safe_open(str(path), framework="pt") as f:
            return json.loads(f.metadata()["sae_concepts_trainer"])["step"]
    except Exception:
        return -1


def test_killed_run_resumes_to_identical_weights(tmp_path):
    torch.set_num_threads(1)
    ckpt = tmp_path / "run.ckpt"
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(ckpt)])
    try:
        deadline = time.time() + 120
        while checkpoint_step(ckpt) < 40 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    killed_at = checkpoint_step(ckpt)
    assert 0 < killed_at < STEPS, f"the run was not killed half-way (checkpoint at step {killed_at})"
    assert not [p for p in tmp_path.iterdir() if p.name != ckpt.name and not p.name.startswith(".")]

    planted = PlantedDictionary.random(d=24, n_atoms=48, active_per_vector=3, seed=5)
    resumed = Trainer(SaeConfig(**SAE_CFG), TrainConfig(max_steps=STEPS, **TRAIN_CFG), checkpoint=ckpt)
    assert resumed.step == killed_at
    resumed.fit(planted.batches(64, 10_000, seed=6))

    straight = Trainer(SaeConfig(**SAE_CFG), TrainConfig(max_steps=STEPS, **TRAIN_CFG))
    straight.fit(planted.batches(64, 10_000, seed=6))
    assert resumed.step == straight.step == STEPS
    assert resumed.vectors_seen == straight.vectors_seen
    for (name, a), b in zip(resumed.sae.state_dict().items(), straight.sae.state_dict().values()):
        assert torch.equal(a, b), name
    assert torch.equal(resumed.tokens_since_fired, straight.tokens_since_fired)
    assert [h["step"] for h in resumed.history] == [h["step"] for h in straight.history]


def test_resume_with_other_config_or_corrupt_checkpoint_is_refused(tmp_path):
    ckpt = tmp_path / "c.ckpt"
    Trainer(SaeConfig(d_in=8, n_latents=16, k=2), TrainConfig(), checkpoint=ckpt).fit(
        [torch.randn(16, 8) for _ in range(3)])
    with pytest.raises(TrainingError, match="k: checkpoint 2 vs now 3"):
        Trainer(SaeConfig(d_in=8, n_latents=16, k=3), TrainConfig(), checkpoint=ckpt)
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    with pytest.raises(TrainingError, match="cannot be read"):
        Trainer(SaeConfig(d_in=8, n_latents=16, k=2), TrainConfig(), checkpoint=ckpt)
