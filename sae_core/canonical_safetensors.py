"""Make a safetensors file's bytes a function of its content alone.

safetensors (0.8) writes the header's `__metadata__` from a Rust HashMap, whose order changes
from process to process: the same SAE set saved twice gave two different files (same tensors,
metadata keys in another order). Rewriting the header as JSON with sorted keys, padded with
spaces to the length it had (JSON ignores them; the data offsets are relative to the header's
end), makes the file reproducible, so equal runs can be compared byte for byte.
"""
from __future__ import annotations

import json
import os
import struct


def canonicalise_header(path: str | os.PathLike) -> None:
    """Rewrite `path`'s header in canonical form (sorted keys, compact), in place."""
    with open(path, "r+b") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        canonical = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        # Never longer than the original: compact, and every escape is in its shortest form.
        if len(canonical) > n:
            raise ValueError(f"{path}: canonical safetensors header longer than the written one")
        f.seek(8)
        f.write(canonical + b" " * (n - len(canonical)))
