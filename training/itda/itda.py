"""`sae-concepts itda`: one ITDA dictionary per (block, t, cond), from the same shards as `train`.

Each key's vectors are read shard by shard in collection order (with their prompt id and token
position, which become an atom's provenance) and grown into a dictionary (sae_core/itda.py). The
file grows as dictionaries finish; `evaluate --itda` reports their FVU beside the SAEs' at the
SAEs' L0, and LoadSAE / the steer nodes take the file as they take an SAE set.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ...sae_core import SAEEntry, SAEInfo
from ...sae_core.atomic import check_replaceable, check_writable
from ...sae_core.errors import require
from ...sae_core.itda import FORMAT_NAME as ITDA_FORMAT, ItdaConfig, build_itda, save_itda_set
from ..storage.shards import ShardSet, parse_key
from ..train.train import select_keys


@dataclass
class ItdaCommandConfig:
    shards: str = field(default="", metadata={"help": "collection folder from `sae-concepts collect`"})
    out: str = field(default="itda_set.safetensors", metadata={"help": "ITDA set file to write"})
    only: str = field(default="", metadata={"help": "comma-separated parts a key must contain (default: every key)"})
    k: int = field(default=32, metadata={"help": "target L0: pursuit steps per vector"})
    threshold: float = field(default=0.1, metadata={"help": "add a vector when ||x - x_hat||^2 / ||x||^2 exceeds it"})
    max_atoms: int = field(default=0, metadata={"help": "largest dictionary per key (0 = no limit)"})
    encoder: str = field(default="gp", metadata={"help": "mp (matching pursuit) or gp (gradient pursuit)"})
    standardise: bool = field(default=False, metadata={"help": "per-dimension standardisation (first batch)"})
    batch_size: int = field(default=4096, metadata={"help": "vectors considered together"})
    passes: int = field(default=1, metadata={"help": "passes over the data"})


def key_batches(shards: ShardSet, key: str, batch_size: int):
    def gen():
        for shard in shards.shards:
            if not shard["counts"].get(key):
                continue
            part = shards.read(shard, key)
            for s in range(0, part["acts"].shape[0], batch_size):
                yield (part["acts"][s:s + batch_size].float(), part["prompt"][s:s + batch_size],
                       part["pos"][s:s + batch_size])
    return gen


def build_itda_set(cmd: ItdaCommandConfig, progress: bool = True) -> list[SAEEntry]:
    require(cmd.batch_size > 0 and cmd.passes > 0, f"--batch-size and --passes must be positive, got "
                                                   f"{cmd.batch_size} and {cmd.passes}")
    cfg = ItdaConfig(k=cmd.k, threshold=cmd.threshold, max_atoms=cmd.max_atoms, encoder=cmd.encoder,
                     standardise=cmd.standardise)
    shards = ShardSet.open(cmd.shards)
    keys = select_keys(shards, cmd.only)
    check_writable(Path(cmd.out).parent, "--out")
    check_replaceable(cmd.out, "--out", "safetensors", ITDA_FORMAT)
    shards.verify_all(keys, progress=progress)
    entries = []
    for key in keys:
        block, t, cond = parse_key(key)
        d = shards.width(key)
        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=shards.vectors(key) * cmd.passes, desc=f"itda {key}", unit="vec")
        itda, summary = build_itda(key_batches(shards, key, cmd.batch_size), d, cfg, passes=cmd.passes,
                                   progress=(lambda n, atoms: (bar.update(n), bar.set_postfix(atoms=atoms)))
                                   if bar else None)
        if bar is not None:
            bar.close()
        require(itda.n_latents > 0, f"{key}: no atom was added (all vectors are zero?)")
        diffusers = next((sh.get("blocks_diffusers", {}).get(block, "") for sh in shards.shards
                          if sh.get("blocks_diffusers")), "")
        info = SAEInfo(model_family=shards.config.get("model_family", "sd1"), block=block, block_diffusers=diffusers,
                       t=t, cond=cond, quantity=shards.config.get("quantity", "delta"), source_format="itda",
                       # Where the atoms came from: the report draws each atom's source patch from
                       # this collection's images (its prompt ids and token positions index it).
                       training={**summary, "shards": str(Path(cmd.shards).resolve()),
                                 "shards_fingerprint": shards.fingerprint()})
        entries.append(SAEEntry(itda, info))
        save_itda_set(cmd.out, entries)   # grows as dictionaries finish
        if progress:
            print(f"{key}: {itda.n_latents} atoms from {summary['vectors_seen']} vectors in {summary['seconds']} s")
    return entries
