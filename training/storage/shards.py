"""Sharded activation storage: fp16 safetensors shards + one manifest per writer (rank).

A shard holds, for each key "<block>|t=<t>|<cond>", the tensors
  <key>/acts [n, d] fp16, <key>/prompt [n] int64 (prompt id), <key>/pos [n] int32 (position
  index in the block's h x w grid). A manifest `manifest_rNNN.json` lists the finished shards of
  one rank with each one's size and SHA-256; a shard is finished only once listed, and both are
  written atomically, so a killed run resumes from the last finished shard with nothing lost or
  duplicated. A writer reopening a folder checks every listed shard against its size and checksum
  and redoes exactly the missing or damaged ones: "delete the broken shard and rerun collect" works.
Readers verify a shard's checksum once per process, before its first use, and name the bad file.
Reading streams shards through a bounded shuffle window: memory does not grow with the data.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ...sae_core.atomic import atomic_path, write_text_atomic
from ...sae_core.errors import SAEConceptsError


class ShardError(SAEConceptsError, RuntimeError):
    pass


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def shard_problem(root: Path, shard: dict) -> str | None:
    """Why a listed shard cannot be used (missing, other size, other checksum), or None."""
    path = Path(root) / shard["file"]
    if not path.exists():
        return "missing"
    size = path.stat().st_size
    if size != shard["bytes"]:
        return f"damaged: {size} bytes on disk, {shard['bytes']} when written"
    if shard.get("sha256") and file_sha256(path) != shard["sha256"]:
        return f"damaged: its SHA-256 differs from the one recorded when it was written ({shard['sha256'][:12]}...)"
    return None


def activation_key(block: str, t: float, cond: str) -> str:
    return f"{block}|t={t:g}|{cond}"


def parse_key(key: str) -> tuple[str, float, str]:
    block, t, cond = key.split("|")
    return block, float(t[2:]), cond


class ShardWriter:
    """Writes the shards of one rank; `done` tells which shard indices are already finished (listed,
    present and intact: `repaired` names the listed ones that were not and will be written again)."""

    def __init__(self, out_dir, rank: int = 0, run_config: dict | None = None):
        self.out = Path(out_dir)
        self.rank = rank
        test = self.out / f".write_test_{os.getpid()}"
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            test.write_bytes(b"")
            test.unlink()
        except OSError as e:
            raise ShardError(f"output folder {self.out} is not writable: {e}") from e
        self.manifest_path = self.out / f"manifest_r{rank:03d}.json"
        self.manifest = {"rank": rank, "config": run_config or {}, "shards": []}
        if self.manifest_path.exists():
            old = json.loads(self.manifest_path.read_text())
            if run_config is not None and old.get("config") != run_config:
                diff = {k: (old["config"].get(k), v) for k, v in run_config.items() if old["config"].get(k) != v}
                raise ShardError(f"{self.out} holds a collection made with other settings {diff} "
                                 f"(old, new); use another --out or delete it")
            self.manifest = old
        self.repaired: list[str] = []
        intact = []
        for shard in self.manifest["shards"]:
            problem = shard_problem(self.out, shard)
            if problem:
                self.repaired.append(f"{shard['file']} ({problem})")
            else:
                intact.append(shard)
        if self.repaired:
            self.manifest["shards"] = intact
            write_text_atomic(self.manifest_path, json.dumps(self.manifest, indent=1))

    @property
    def done(self) -> set[int]:
        return {s["index"] for s in self.manifest["shards"]}

    def write(self, index: int, tensors: dict[str, torch.Tensor], info: dict) -> None:
        name = f"shard_r{self.rank:03d}_{index:05d}.safetensors"
        meta = {"sae_concepts_shard": json.dumps({"rank": self.rank, "index": index, **info})}
        with atomic_path(self.out / name) as tmp:
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)
            digest = file_sha256(tmp)
        counts = {k[: -len("/acts")]: int(v.shape[0]) for k, v in tensors.items() if k.endswith("/acts")}
        entry = {"index": index, "file": name, "bytes": (self.out / name).stat().st_size, "sha256": digest,
                 "counts": counts, **info}
        self.manifest["shards"] = [s for s in self.manifest["shards"] if s["index"] != index] + [entry]
        self.manifest["shards"].sort(key=lambda s: s["index"])
        write_text_atomic(self.manifest_path, json.dumps(self.manifest, indent=1))


def sae_key(info) -> str:
    """The shard key an SAE set entry reads (an SAE without a timestep bucket reads t = 1.0's)."""
    return activation_key(info.block, info.t if info.t is not None else 1.0, info.cond)


@dataclass
class ShardSet:
    """All finished shards of a collection folder (every rank)."""
    root: Path
    shards: list[dict]
    config: dict
    verified: set = field(default_factory=set)   # files whose checksum this process has checked

    @classmethod
    def open(cls, root) -> "ShardSet":
        root = Path(root)
        manifests = sorted(root.glob("manifest_r*.json"))
        if not manifests:
            raise ShardError(f"{root}: no manifest_r*.json: not a collection folder (run `sae-concepts collect`)")
        shards, config = [], {}
        for m in manifests:
            try:
                data = json.loads(m.read_text())
            except json.JSONDecodeError as e:
                raise ShardError(f"{m}: manifest is not valid JSON ({e})") from e
            listed = data.get("shards") if isinstance(data, dict) else None
            if not isinstance(listed, list) or not all(
                    isinstance(s, dict) and isinstance(s.get("file"), str) and isinstance(s.get("counts"), dict)
                    and "bytes" in s for s in listed):
                raise ShardError(f"{m}: not a collection manifest (expected {{\"shards\": [{{\"file\", \"bytes\", "
                                 f"\"counts\", ...}}]}}, found {type(data).__name__} "
                                 f"{str(data)[:80]!r}); it was edited or written by something else")
            config = config or data.get("config", {})
            shards += listed
        shards.sort(key=lambda s: (s["file"]))
        return cls(root, shards, config)

    def fingerprint(self) -> str:
        """Changes whenever a shard is added, redone or dropped (names, sizes, checksums, counts)."""
        listed = [[s["file"], s["bytes"], s.get("sha256", ""), s["counts"]] for s in self.shards]
        return hashlib.sha256(json.dumps(listed, sort_keys=True).encode()).hexdigest()[:16]

    def keys(self) -> list[str]:
        return sorted({k for s in self.shards for k in s["counts"]})

    def width(self, key: str) -> int:
        """d of the activations stored for `key` (read from its first shard)."""
        first = next((s for s in self.shards if s["counts"].get(key)), None)
        if first is None:
            raise ShardError(f"{self.root}: no activations for {key}; keys present: {self.keys()}")
        return int(self.read(first, key)["acts"].shape[1])

    def held_saes(self, sae_set, sae_file):
        """(index in the set, entry, shard key) for every SAE of `sae_set` whose (block, t, cond) these
        shards hold, its width checked against theirs; the others are skipped."""
        for i, e in enumerate(sae_set):
            key = sae_key(e.info)
            if key in self.keys():
                self.require_width(key, e, sae_file)
                yield i, e, key

    def require_width(self, key: str, sae_entry, sae_file) -> None:
        """The SAE must take vectors of the width the shards hold for its key."""
        d = self.width(key)
        if d != sae_entry.sae.d_in:
            raise ShardError(f"the SAE for {sae_entry.info.label()} in {sae_file} takes d={sae_entry.sae.d_in} "
                             f"vectors, but {self.root} holds d={d} for {key}: SAE set and shards come from "
                             f"different models or blocks")

    def vectors(self, key: str) -> int:
        return sum(s["counts"].get(key, 0) for s in self.shards)

    def verify(self, shard: dict) -> None:
        """Size and checksum against the manifest and finite activations, once per shard and process."""
        if shard["file"] in self.verified:
            return
        path = self.root / shard["file"]
        problem = shard_problem(self.root, shard)
        if problem == "missing":
            raise ShardError(f"shard {path} is listed in the manifest but missing; rerun collect (same "
                             f"command) to redo it")
        if problem:
            raise ShardError(f"shard {path} is corrupted ({problem}); delete it and rerun collect (same "
                             f"command) to redo it")
        try:
            with safe_open(str(path), framework="pt") as f:
                for name in f.keys():
                    if name.endswith("/acts"):
                        bad = int((~torch.isfinite(f.get_tensor(name))).sum())
                        if bad:
                            raise ShardError(
                                f"shard {path}: {name[:-len('/acts')]} holds {bad} NaN/Inf activation value(s) "
                                f"(an fp16 overflow in the model, or a damaged file); delete it and rerun "
                                f"collect to redo it")
        except ShardError:
            raise
        except Exception as e:  # noqa: BLE001 - any read failure means a corrupted shard
            raise ShardError(f"shard {path} cannot be read ({type(e).__name__}: {e}); delete it and "
                             f"rerun collect to redo it") from e
        self.verified.add(shard["file"])

    def verify_all(self, keys=None, progress: bool = False) -> None:
        """Verify every shard holding one of `keys` (default: all) before a long job starts."""
        todo = [s for s in self.shards if keys is None or any(s["counts"].get(k) for k in keys)]
        if progress:
            from tqdm.auto import tqdm
            todo = tqdm(todo, desc="verify shards", unit="shard")
        for shard in todo:
            self.verify(shard)

    def read(self, shard: dict, key: str) -> dict[str, torch.Tensor]:
        """acts/prompt/pos of one key in one shard, checked against the manifest."""
        path = self.root / shard["file"]
        self.verify(shard)
        try:
            with safe_open(str(path), framework="pt") as f:
                out = {name: f.get_tensor(f"{key}/{name}") for name in ("acts", "prompt", "pos")}
        except Exception as e:  # noqa: BLE001 - any read failure means a corrupted shard
            raise ShardError(f"shard {path} cannot be read ({type(e).__name__}: {e}); delete it and "
                             f"rerun collect to redo it") from e
        if out["acts"].shape[0] != shard["counts"][key]:
            raise ShardError(f"shard {path}: {key} has {out['acts'].shape[0]} vectors, manifest says "
                             f"{shard['counts'][key]}")
        return out


def stream_batches(shards: ShardSet, key: str, batch_size: int, window: int = 1 << 20, seed: int = 0,
                   rank: int = 0, world: int = 1, epochs: int = 1) -> Iterator[torch.Tensor]:
    """float32 [batch_size, d] batches of `key`, shuffled within windows of about `window` vectors
    (shards visited in a seeded random order). Deterministic for a given seed; rank r of world w
    reads shards r, r + w, ... Peak memory ~ window + one shard, whatever the data size."""
    with_key = [s for s in shards.shards if s["counts"].get(key)]
    if not with_key:
        raise ShardError(f"{shards.root}: no activations for {key}; keys present: {shards.keys()}")
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = [with_key[i] for i in torch.randperm(len(with_key), generator=g).tolist()][rank::world]
        buffer: list[torch.Tensor] = []
        held = 0
        leftover = None
        for i, shard in enumerate(order):
            acts = shards.read(shard, key)["acts"]
            buffer.append(acts)
            held += acts.shape[0]
            if held < window and i < len(order) - 1:
                continue
            pool = torch.cat(([leftover] if leftover is not None else []) + buffer)
            buffer, held = [], 0
            pool = pool[torch.randperm(pool.shape[0], generator=g)]
            full = pool.shape[0] // batch_size * batch_size
            for start in range(0, full, batch_size):
                yield pool[start:start + batch_size].float()
            leftover = pool[full:] if full < pool.shape[0] else None
        if leftover is not None and leftover.shape[0] > 0:
            yield leftover.float()
