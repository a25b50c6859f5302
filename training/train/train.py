"""`sae-concepts train`: one SAE per (block, t, cond) streamed from collected shards.

A run keeps its checkpoints, logs and settings in a run folder beside the shards (default
`<shards>/train_runs/<out file stem>/`, `--run-dir` to choose), never beside the SAE set it writes
(which may well be ComfyUI's models/sae). `run.json` there records the settings and the shard
collection's fingerprint: rerunning the same command resumes ("resuming from step N of M"); any
other setting, or shards that changed since, is refused with what differs and how to start over.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from ...sae_core import SAEEntry, SAEInfo, SaeConfig, TrainConfig, Trainer, save_sae_set
from ...sae_core.atomic import check_writable, write_text_atomic
from ...sae_core.errors import ConfigError, finite, require
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
    standardise: bool = field(default=False, metadata={"help": "per-dimension input scale (each dimension's std "
                                                               "over the first batch, as Shabalin et al. on Flux) "
                                                               "instead of one scale for all"})
    batch_size: int = field(default=4096, metadata={"help": "vectors per step (per rank)"})
    shuffle_window: int = field(default=1 << 20, metadata={"help": "vectors shuffled together in memory"})
    epochs: int = field(default=1, metadata={"help": "passes over the data"})
    device: str = field(default="auto", metadata={"help": "cpu, cuda, cuda:N or auto"})
    run_dir: str = field(default="", metadata={"help": "folder for checkpoints, logs and the run's settings "
                                                       "(default: <shards>/train_runs/<out file stem>)"})


def select_keys(shards: ShardSet, only: str) -> list[str]:
    parts = [p.strip() for p in only.split(",") if p.strip()]
    if not shards.keys():
        raise ConfigError(f"{shards.root}: the collection lists no finished shard (was `collect` stopped before its "
                          f"first shard? run it again to resume)")
    keys = [k for k in shards.keys() if all(p in k for p in parts)]
    if not keys:
        raise ConfigError(f"--only {only!r}: no activation key matches {parts}; keys in {shards.root}: "
                          f"{shards.keys()}")
    return keys


def run_dir(cmd: TrainCommandConfig) -> Path:
    return Path(cmd.run_dir) if cmd.run_dir else Path(cmd.shards) / "train_runs" / Path(cmd.out).stem


def check_settings(cmd: TrainCommandConfig, train: TrainConfig) -> None:
    """Values that make no sense are refused before any work, naming the option."""
    for name in ("expansion_factor", "k", "batch_size", "shuffle_window", "epochs"):
        require(getattr(cmd, name) > 0, f"--{name.replace('_', '-')} must be positive, got {getattr(cmd, name)}")
    require(cmd.shuffle_window >= cmd.batch_size, f"--shuffle-window ({cmd.shuffle_window}) must hold at least "
                                                   f"one batch (--batch-size {cmd.batch_size})")
    require(finite("--lr", train.lr) >= 0, f"--lr must be positive (or 0: automatic), got {train.lr}")
    require(finite("--auxk-alpha", train.auxk_alpha) >= 0, f"--auxk-alpha must be >= 0, got {train.auxk_alpha}")
    for name in ("k_aux", "max_steps", "checkpoint_every", "dead_after"):
        require(getattr(train, name) >= 0, f"--{name.replace('_', '-')} must be >= 0, got {getattr(train, name)}")
    for name in ("init_sample", "log_every"):
        require(getattr(train, name) > 0, f"--{name.replace('_', '-')} must be positive, got {getattr(train, name)}")
    if cmd.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {cmd.device}: CUDA is not available here (use cpu or auto)")
    if cmd.device not in ("auto", "cpu") and not cmd.device.startswith(("cuda", "mps")):
        raise ConfigError(f"--device must be cpu, cuda, cuda:N or auto, got {cmd.device!r}")


def run_settings(cmd: TrainCommandConfig, train: TrainConfig, shards: ShardSet, keys: list[str], world: int) -> dict:
    """What decides the weights a run produces (not where it runs or how often it logs)."""
    t = {k: v for k, v in asdict(train).items() if k not in ("log_every", "checkpoint_every")}
    return {"out": str(Path(cmd.out).resolve()), "shards_fingerprint": shards.fingerprint(), "keys": keys,
            "expansion_factor": cmd.expansion_factor, "k": cmd.k, "latent_bias": cmd.latent_bias,
            "batch_size": cmd.batch_size, "shuffle_window": cmd.shuffle_window, "epochs": cmd.epochs,
            "world_size": world, "standardise": cmd.standardise, **t}


# Settings added after runs were first recorded, with the value a run.json without them had.
ADDED_SETTINGS = {"standardise": False}


def start_or_resume(cmd: TrainCommandConfig, settings: dict, run: Path, shards: ShardSet) -> None:
    """Refuse an --out or run folder that belongs to another run; record this run's settings."""
    out = Path(cmd.out)
    record = run / "run.json"
    start_over = (f"to start over, delete {run} and {out}; to keep that run, choose another --out "
                  f"(or --run-dir)")
    if record.exists():
        old = json.loads(record.read_text())
        differ = [k for k in settings if old.get(k, ADDED_SETTINGS.get(k)) != settings[k]]
        if differ:
            what = []
            for k in differ:
                if k == "shards_fingerprint":
                    what.append(f"the shards in {shards.root} changed since (shards added, redone or removed)")
                else:
                    flag = "--" + k.replace("_", "-")
                    what.append(f"{flag}: {old.get(k, ADDED_SETTINGS.get(k))!r} then, {settings[k]!r} now")
            raise ConfigError(f"{run} holds a training run with other settings: {'; '.join(what)}; {start_over}")
    elif out.exists():
        raise ConfigError(f"--out {out} already exists and no training run for it is recorded in {run}: it would "
                          f"be overwritten; delete it or choose another --out")
    write_text_atomic(record, json.dumps(settings, indent=1))


def estimated_bytes(dims: dict[str, int], cmd: TrainCommandConfig) -> int:
    """The SAE set (float32) plus a checkpoint per SAE (weights and Adam's two moments)."""
    per = {key: 4 * (2 * cmd.expansion_factor * d * d + cmd.expansion_factor * d + d + 1) for key, d in dims.items()}
    return sum(per.values()) + 3 * sum(per.values())


def train_saes(cmd: TrainCommandConfig, train: TrainConfig, progress: bool = True) -> list[SAEEntry]:
    check_settings(cmd, train)
    shards = ShardSet.open(cmd.shards)
    out = Path(cmd.out)
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    rank = dist.get_rank() if world > 1 else 0
    device = ("cuda" if torch.cuda.is_available() else "cpu") if cmd.device == "auto" else cmd.device
    if device.startswith("cuda") and world > 1 and ":" not in device:
        device = f"cuda:{rank % torch.cuda.device_count()}"
    keys = select_keys(shards, cmd.only)
    dims = {}
    for key in keys:
        first = next(s for s in shards.shards if s["counts"].get(key))
        dims[key] = shards.read(first, key)["acts"].shape[1]
        require(cmd.k <= cmd.expansion_factor * dims[key],
                f"--k {cmd.k} is more than the SAE's {cmd.expansion_factor * dims[key]} features "
                f"(--expansion-factor {cmd.expansion_factor} x d {dims[key]} of {key})")
    run = run_dir(cmd)
    if rank == 0:
        check_writable(out.parent, "--out")
        check_writable(run, "--run-dir" if cmd.run_dir else f"the run folder (--run-dir, default {run})",
                       need_bytes=estimated_bytes(dims, cmd))
        start_or_resume(cmd, run_settings(cmd, train, shards, keys, world), run, shards)
        shards.verify_all(keys, progress=progress)   # a damaged shard is named now, not as NaN mid-run
    if world > 1:
        dist.barrier()
    entries = []
    for key in keys:
        block, t, cond = parse_key(key)
        d = dims[key]
        sae_cfg = SaeConfig(d_in=d, expansion_factor=cmd.expansion_factor, k=cmd.k, latent_bias=cmd.latent_bias,
                            standardise=cmd.standardise)
        safe = key.replace("|", "_").replace("=", "")
        expected = math.ceil(shards.vectors(key) / (world * cmd.batch_size)) * cmd.epochs
        if train.max_steps:
            expected = min(expected, train.max_steps)
        trainer = Trainer(sae_cfg, train, checkpoint=run / f"{safe}.ckpt", log_path=run / f"{safe}.log.jsonl",
                          device=device, progress=progress and rank == 0, expected_steps=expected)
        if rank == 0:
            if trainer.finished:
                print(f"{key}: already trained in {run} ({trainer.step} steps)")
            elif trainer.step:
                print(f"{key}: resuming from step {trainer.step} of {expected}")
        if progress and rank == 0:
            print(f"training {key}: d={d} n_f={sae_cfg.n_latents} k={sae_cfg.k}, "
                  f"{shards.vectors(key)} vectors")
        sae = trainer.fit(stream_batches(shards, key, cmd.batch_size, cmd.shuffle_window, seed=train.seed,
                                         rank=rank, world=world, epochs=cmd.epochs))
        diffusers = next((sh.get("blocks_diffusers", {}).get(block, "") for sh in shards.shards
                          if sh.get("blocks_diffusers")), "")
        info = SAEInfo(model_family=shards.config.get("model_family", "sd1"), block=block, block_diffusers=diffusers,
                       t=t, cond=cond, quantity=shards.config.get("quantity", "delta"), training=trainer.summary())
        entries.append(SAEEntry(sae.cpu().eval(), info))
        if rank == 0:  # the set grows as SAEs finish, so a killed run keeps what it finished
            save_sae_set(out, entries)
    return entries
