"""`sae-concepts collect` (host tier): collect's own logic (shards, keys, positions, images, resume
after a kill, rank split, errors) on a tiny SD1.x U-Net of ComfyUI's classes, in process and through
the command as a user runs it.

The command's run on the full-size checkpoint is in test_host_server.py, the one file that loads
it (so that under `pytest -n 2 --dist loadfile` two such processes never run at once). Here the
resume-after-kill runs and the two torchrun ranks use the tiny model through the command as
installed (its loader swapped: host_support/collect_tiny_cli.py)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from sae_concepts.training.storage.shards import ShardSet, activation_key

PROMPTS = ["a dog on a beach", "a red car in a city street", "a castle on a hill at sunset"]
TINY_CH = 128   # channels of the tiny model's 1280-channel blocks (model_channels 32 x 4)
TINY_CLI = Path(__file__).parent / "host_support" / "collect_tiny_cli.py"


@pytest.fixture(scope="module")
def loaded(tiny_model):
    """(model, clip, vae) as collect takes them: the session's tiny SD1.x U-Net, a text stand-in with
    its 32-d context, and a random TAESD as the VAE (images are decoded and saved)."""
    from random_models import build_random_taesd_vae, tiny_sd1_text
    return tiny_model, tiny_sd1_text(), build_random_taesd_vae(seed=0)


def small_cfg(tmp_path, **over):
    from sae_concepts.training.collect.collect import CollectConfig
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n\n")
    cfg = dict(checkpoint="", prompts=str(tmp_path / "prompts.txt"), out=str(tmp_path / "acts"),
               blocks="middle_block.1,output_blocks.3.1", timesteps="1.0,0.0", steps=4, width=128, height=128,
               prompts_per_shard=2, seed=5)
    cfg.update(over)
    return CollectConfig(**cfg)


def subprocess_env():
    from conftest import PLACEHOLDER, _torchvision_works
    env = dict(os.environ)
    if not _torchvision_works():
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [env.get("PYTHONPATH"), PLACEHOLDER]))
    return env


def test_collect_records_the_blocks_delta(tmp_path, loaded):
    from sae_concepts.host.block_patch import patch_block
    from sae_concepts.training.collect.collect import collect, encode, write_prompt_index
    import comfy.sample
    model, clip, vae = loaded
    cfg = small_cfg(tmp_path)
    out = collect(cfg, model, clip, vae, progress=False)
    write_prompt_index(out)
    s = ShardSet.open(out)
    assert len(s.shards) == 2 and [sh["prompt_ids"] for sh in s.shards] == [[0, 1], [2]]
    assert s.keys() == sorted(activation_key(b, t, c) for b in ("middle_block.1", "output_blocks.3.1")
                              for t in (1.0, 0.0) for c in ("cond", "uncond"))
    mid = s.read(s.shards[0], activation_key("middle_block.1", 1.0, "cond"))
    assert mid["acts"].shape == (2 * 4, TINY_CH) and mid["acts"].dtype == torch.float16   # 2x2 grid at 128 px
    assert mid["prompt"].tolist() == [0] * 4 + [1] * 4 and mid["pos"].tolist() == [0, 1, 2, 3] * 2
    up = s.read(s.shards[1], activation_key("output_blocks.3.1", 0.0, "uncond"))
    assert up["acts"].shape == (16, TINY_CH)
    assert s.shards[0]["grids"] == {"middle_block.1": [2, 2], "output_blocks.3.1": [4, 4]}
    assert s.shards[0]["step_index"] == {"1": 0, "0": 3}
    assert sorted(p.name for p in (out / "images").iterdir()) == ["000000.png", "000001.png", "000002.png"]
    rows = [json.loads(line) for line in (out / "prompts.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in rows] == PROMPTS and rows[1]["seed"] == 6
    # Independent check: the first step's Delta of prompt 1, recorded by a plain wrapper.
    seen = []
    m = patch_block(model, "middle_block.1", lambda d, c: seen.append((d.clone(), c.row_kinds)) or None)
    noise = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(6))
    comfy.sample.sample(m, noise, 4, 7.5, "ddim", "ddim_uniform", encode(clip, PROMPTS[1]), encode(clip, ""),
                        torch.zeros_like(noise), last_step=1, disable_pbar=True, seed=6)
    d, kinds = seen[0]
    expect = d[kinds.index("cond")].reshape(TINY_CH, 4).t().half()
    torch.testing.assert_close(mid["acts"][4:8], expect, rtol=2e-3, atol=2e-3)


def test_collect_subsamples_positions(tmp_path, loaded):
    from sae_concepts.training.collect.collect import collect
    out = collect(small_cfg(tmp_path, positions=5, blocks="output_blocks.3.1", timesteps="0.5",
                            save_images=False), *loaded, progress=False)
    s = ShardSet.open(out)
    acts = s.read(s.shards[0], activation_key("output_blocks.3.1", 0.5, "cond"))
    assert acts["acts"].shape == (10, TINY_CH) and len(set(acts["pos"][:5].tolist())) == 5
    assert not (Path(out) / "images").exists()


def cli_args(cfg, checkpoint) -> list[str]:
    """`collect` options for cfg, as a user types them."""
    args = ["collect", "--quiet", "--checkpoint", str(checkpoint), "--prompts", cfg.prompts, "--out", cfg.out,
            "--blocks", cfg.blocks, "--timesteps", cfg.timesteps, "--steps", str(cfg.steps), "--width",
            str(cfg.width), "--height", str(cfg.height), "--prompts-per-shard", str(cfg.prompts_per_shard),
            "--seed", str(cfg.seed)]
    args += [] if cfg.weight_dtype == "default" else ["--weight-dtype", cfg.weight_dtype]
    return args + ([] if cfg.save_images else ["--no-save-images"])


def test_collect_resumes_after_kill(tmp_path, comfy):
    """`sae-concepts collect` (as installed, on the tiny SD1.x: host_support/collect_tiny_cli.py),
    killed (SIGKILL) after its first shards and rerun: the result equals, bit for bit, a run that was
    never killed, images included. 24 prompts of one shard each, so the kill lands mid-run."""
    prompts = [f"{p}, view {i}" for i in range(8) for p in PROMPTS]
    (tmp_path / "many.txt").write_text("\n".join(prompts) + "\n")
    cfg = small_cfg(tmp_path, prompts=str(tmp_path / "many.txt"), steps=2, prompts_per_shard=1)
    cli = [sys.executable, str(TINY_CLI)]
    straight_out = tmp_path / "straight"
    straight = subprocess.run(cli + cli_args(replace(cfg, out=str(straight_out)), "tiny-sd1"),
                              env=subprocess_env(), capture_output=True, text=True)
    assert straight.returncode == 0, straight.stderr[-3000:]
    cmd = cli + cli_args(cfg, "tiny-sd1")
    proc = subprocess.Popen(cmd, env=subprocess_env())
    manifest = Path(cfg.out) / "manifest_r000.json"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if manifest.exists() and len(json.loads(manifest.read_text())["shards"]) >= 1:
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(json.loads(manifest.read_text())["shards"])
    assert 1 <= done < len(prompts), f"the run was not killed half-way ({done} shards done)"
    kept = {sh["file"]: (Path(cfg.out) / sh["file"]).stat().st_mtime_ns
            for sh in json.loads(manifest.read_text())["shards"]}
    assert subprocess.run(cmd, env=subprocess_env()).returncode == 0
    assert {f: (Path(cfg.out) / f).stat().st_mtime_ns for f in kept} == kept, "finished shards were redone"
    resumed, straight = ShardSet.open(cfg.out), ShardSet.open(straight_out)
    assert [s["prompt_ids"] for s in resumed.shards] == [[i] for i in range(len(prompts))]
    assert [s["prompt_ids"] for s in straight.shards] == [[i] for i in range(len(prompts))]
    assert resumed.keys() == straight.keys() and len(resumed.keys()) == 8   # 2 blocks x 2 t x cond/uncond
    for a, b in zip(resumed.shards, straight.shards):
        for key in resumed.keys():
            assert torch.equal(resumed.read(a, key)["acts"], straight.read(b, key)["acts"]), (a["file"], key)
    images = sorted(p.name for p in (Path(cfg.out) / "images").iterdir())
    assert images == sorted(p.name for p in (straight_out / "images").iterdir()) and len(images) == len(prompts)
    for name in images:
        assert (Path(cfg.out) / "images" / name).read_bytes() == (straight_out / "images" / name).read_bytes(), name


def test_collect_two_ranks_with_torchrun(tmp_path, comfy):
    """Two torchrun ranks split the prompts (i % world == rank), each writes its own manifest and
    rank 0 the prompt index. The command runs as installed with its model loader swapped for the
    tiny SD1.x (host_support/collect_tiny_cli.py): two full-size ranks held ~6 GiB each at once."""
    cfg = small_cfg(tmp_path, blocks="middle_block.1", timesteps="1.0", steps=2, save_images=False)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(TINY_CLI),
           *cli_args(cfg, "tiny-sd1")]
    r = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    s = ShardSet.open(cfg.out)
    assert sorted(p.name for p in Path(cfg.out).glob("manifest_r*.json")) == ["manifest_r000.json", "manifest_r001.json"]
    assert sorted(pid for sh in s.shards for pid in sh["prompt_ids"]) == [0, 1, 2]
    assert {tuple(sh["prompt_ids"]) for sh in s.shards} == {(0, 2), (1,)}
    assert s.read(s.shards[0], activation_key("middle_block.1", 1.0, "cond"))["acts"].shape[1] == TINY_CH
    rows = [json.loads(line) for line in (Path(cfg.out) / "prompts.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in rows] == PROMPTS


def test_collect_bad_inputs(tmp_path, loaded):
    from sae_concepts.host.loaders import ModelLoadError
    from sae_concepts.training.collect.collect import collect, load_checkpoint
    from sae_concepts.training.storage.prompts import PromptFileError
    (tmp_path / "empty.txt").write_text("\n  \n")
    with pytest.raises(PromptFileError, match="empty.txt: holds no prompts"):
        collect(small_cfg(tmp_path, prompts=str(tmp_path / "empty.txt")), *loaded, progress=False)
    (tmp_path / "bad.jsonl").write_text('{"prompt": "ok"}\n{"prompt": \n')
    with pytest.raises(PromptFileError, match="bad.jsonl:2: not valid JSON"):
        collect(small_cfg(tmp_path, prompts=str(tmp_path / "bad.jsonl")), *loaded, progress=False)
    (tmp_path / "bad.csv").write_text("text_a,b\nx,y\n")
    with pytest.raises(PromptFileError, match="no prompt column"):
        collect(small_cfg(tmp_path, prompts=str(tmp_path / "bad.csv")), *loaded, progress=False)
    with pytest.raises(ValueError, match="this sd1 model has no transformer block 'input_blocks.3.1'"):
        collect(small_cfg(tmp_path, blocks="input_blocks.3.1"), *loaded, progress=False)
    with pytest.raises(Exception, match="not writable"):
        collect(small_cfg(tmp_path, out="/proc/not_here/acts"), *loaded, progress=False)
    save_file({"foo.weight": torch.zeros(3, 3)}, tmp_path / "notsd.safetensors")
    with pytest.raises(ModelLoadError, match="notsd.safetensors cannot be loaded as a diffusion model"):
        load_checkpoint(str(tmp_path / "notsd.safetensors"))
    assert not (tmp_path / "acts").exists() or not list((tmp_path / "acts").glob("shard_*"))


def test_collect_refuses_other_model_families(comfy):
    from sae_concepts.host.loaders import ModelLoadError, check_family

    class AuraFlow:
        unet_config = {"context_dim": None, "model_channels": None}

    class Fake:
        class model:
            model_config = AuraFlow()
    with pytest.raises(ModelLoadError, match="aura.safetensors is detected as AuraFlow .*not one of the SD1.x, SDXL, "
                                             "Flux.1 and SD3/SD3.5 models SAE Concepts knows"):
        check_family(Fake, "aura.safetensors")
