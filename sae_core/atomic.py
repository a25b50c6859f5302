"""Write files so a kill at any moment leaves either the old file or the new one, never half."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from .errors import OutputError

PROBE_BYTES = 1 << 16


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path next to `path`; on success fsync it and rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp makes its file 0600, and so do some writers (safetensors 0.8 replaces the file
        # it is given with a private one): the result gets the mode any newly created file gets,
        # 0666 less the umask, as open() would have given it.
        os.chmod(tmp, 0o666 & ~current_umask())
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        with contextlib.suppress(OSError):  # directory fsync is not possible everywhere
            dfd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def current_umask() -> int:
    """The process's umask, read without changing it where Linux exposes it (os.umask can only
    be read by setting it, which races with other threads creating files)."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/self/status") as f:
            return int(next(line for line in f if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def check_writable(folder: str | os.PathLike, what: str, need_bytes: int = 0) -> Path:
    """Refuse at the start of a stage, not after its work: create `folder`, write and fsync a
    probe file there (a full disk fails here), and compare the free space with `need_bytes` when
    the stage can estimate what it will write. `what` names the option, e.g. "--out"."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write_probe_", dir=folder)
        try:
            os.write(fd, b"\0" * PROBE_BYTES)
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as e:
        raise OutputError(f"{what}: {folder} is not writable ({e.strerror or e}); choose a writable place "
                          f"with free space") from e
    free = shutil.disk_usage(folder).free
    if need_bytes > free:
        raise OutputError(f"{what}: {folder} needs about {need_bytes / 2**30:.2f} GiB for this run, "
                          f"{free / 2**30:.2f} GiB are free")
    return folder


def file_kind(path: str | os.PathLike) -> tuple[str, str | None]:
    """What an existing file is: ("json", its "format" field), ("safetensors", its metadata's
    "format") or ("other", None). Reads the JSON or the safetensors header only."""
    import json
    from safetensors import SafetensorError, safe_open
    path = Path(path)
    with contextlib.suppress(SafetensorError, OSError, RuntimeError, ValueError):
        with safe_open(str(path), framework="pt") as f:   # reads the header only
            return "safetensors", (f.metadata() or {}).get("format")
    with contextlib.suppress(OSError, ValueError, UnicodeDecodeError):
        with open(path, "rb") as f:
            start = f.read(64).lstrip()
        # JSON only where it can be: a multi-GB checkpoint given by mistake is not read whole.
        if start[:1] in (b"{", b"[") and path.stat().st_size <= 256 * 2**20:
            data = json.loads(path.read_text(encoding="utf-8"))
            return "json", data.get("format") if isinstance(data, dict) else None
    return "other", None


def check_replaceable(path: str | os.PathLike, what: str, kind: str, fmt: str | None = None,
                      inputs: dict[str, str | os.PathLike] | None = None) -> None:
    """Refuse, before any work, to write `path` over one of this run's inputs (`inputs`: option ->
    path) or over an existing file of another kind: a stage may replace its own earlier output
    (a `kind` file, "json" or "safetensors", carrying format `fmt`, or none when fmt is None), never
    an SAE set, shard, dictionary or checkpoint it was not asked to write."""
    path = Path(path)
    for option, given in (inputs or {}).items():
        if given and path.exists() and Path(given).exists() and path.resolve() == Path(given).resolve():
            raise OutputError(f"{what} {path} is also the {option} input: writing it would destroy that input; "
                              f"choose another {what}")
    if path.is_dir():
        raise OutputError(f"{what} {path} is a folder; give a file path")
    if path.exists():
        found, found_fmt = file_kind(path)
        if found != kind or found_fmt != fmt:   # fmt None: a file that names no format (metrics)
            expected = f"a {kind} file" + (f" of format {fmt!r}" if fmt else "")
            actual = f"a {found} file" + (f" of format {found_fmt!r}" if found_fmt else "")
            raise OutputError(f"{what} {path} already exists and is {actual}, not {expected} (this command's own "
                              f"output, which it may replace): choose another {what} or remove that file")
