"""`sae-concepts train`: one SAE per (block, t, cond) streamed from collected shards."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from ...sae_core import SAEEntry, SAEInfo, SaeConfig, TrainConfig, Trainer, save_sae_set
from ..storage.shards import ShardSet, parse_key, stream_batches


@dataclass
class TrainCommandConfig:
    shards: str = field(default="", metadata={"help": "collection folder from `sae-concepts collect`"})
    out: str = field(default="sae_set.safetensors", metadata={"help": "SAE set file to write"})
    only: str = field(default="", metadata={"help": "comma-separated parts a key must contain, e.g. "
                                                    "'middle_block.1,t=1' (default: every key)"})
    expansion_factor: int = field(default=4, metadata={"help": "n_f = expansion_factor * d"})
    k: int = field(default=10, metadata={"help": "active latents per vector"})
    latent_bias: bool = field(default=False, metadata={"help": "SDLens-style latent bias"})
    batch_size: int = field(default=4096, metadata={"help": "vectors per step (per rank)"})
    shuffle_window: int = field(default=1 << 20, metadata={"help": "vectors shuffled together in memory"})
    epochs: int = field(default=1, metadata={"help": "passes over the data"})
    device: str = field(default="auto", metadata={"help": "cpu, cuda, cuda:N or auto"})


def select_keys(shards: ShardSet, only: str) -> list[str]:
    parts = [p.strip() for p in only.split(",") if p.strip()]
    keys = [k for k in shards.keys() if all(p in k for p in parts)]
    if not keys:
        raise ValueError(f"no activation key matches {parts}; keys in {shards.root}: {shards.keys()}")
    return keys


def checkpoint_dir(out: Path) -> Path:
    return out.parent / (out.stem + "_checkpoints")


def train_saes(cmd: TrainCommandConfig, train: TrainConfig, progress: bool = True) -> list[SAEEntry]:
    shards = ShardSet.open(cmd.shards)
    out = Path(cmd.out)
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    rank = dist.get_rank() if world > 1 else 0
    device = ("cuda" if torch.cuda.is_available() else "cpu") if cmd.device == "auto" else cmd.device
    if device.startswith("cuda") and world > 1 and ":" not in device:
        device = f"cuda:{rank % torch.cuda.device_count()}"
    entries = []
    for key in select_keys(shards, cmd.only):
        block, t, cond = parse_key(key)
        d = shards.read(next(s for s in shards.shards if s["counts"].get(key)), key)["acts"].shape[1]
        sae_cfg = SaeConfig(d_in=d, expansion_factor=cmd.expansion_factor, k=cmd.k, latent_bias=cmd.latent_bias)
        safe = key.replace("|", "_").replace("=", "")
        expected = -(-shards.vectors(key) // (world * cmd.batch_size)) * cmd.epochs
        trainer = Trainer(sae_cfg, train, checkpoint=checkpoint_dir(out) / f"{safe}.ckpt",
                          log_path=checkpoint_dir(out) / f"{safe}.log.jsonl", device=device,
                          progress=progress and rank == 0, expected_steps=expected)
        if progress and rank == 0:
            print(f"training {key}: d={d} n_f={sae_cfg.n_latents} k={sae_cfg.k}, "
                  f"{shards.vectors(key)} vectors")
        sae = trainer.fit(stream_batches(shards, key, cmd.batch_size, cmd.shuffle_window, seed=train.seed,
                                         rank=rank, world=world, epochs=cmd.epochs))
        diffusers = next((sh.get("blocks_diffusers", {}).get(block, "") for sh in shards.shards
                          if sh.get("blocks_diffusers")), "")
        info = SAEInfo(model_family=shards.config.get("model_family", "sd1"), block=block, block_diffusers=diffusers,
                       t=t, cond=cond, training=trainer.summary())
        entries.append(SAEEntry(sae.cpu().eval(), info))
        if rank == 0:  # the set grows as SAEs finish, so a killed run keeps what it finished
            save_sae_set(out, entries)
    return entries
