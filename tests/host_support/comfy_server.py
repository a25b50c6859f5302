"""Start a real ComfyUI server headless on loopback with this pack installed (test support)."""
from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def get(url, timeout=10):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def frontend_root() -> Path | None:
    """The real frontend's static files (pip package comfyui-frontend-package), if installed."""
    try:
        import comfyui_frontend_package
    except ImportError:
        return None
    root = Path(comfyui_frontend_package.__file__).parent / "static"
    return root if (root / "index.html").is_file() else None


@contextlib.contextmanager
def comfy_server(comfy_root: Path, base: Path, frontend: Path, extra_pythonpath: str | None = None,
                 extra_args: tuple[str, ...] = ()):
    """Yields {"url", "base", "log", "object_info"}; `base` gets custom_nodes/sae_concepts -> REPO.
    The caller fills base/models first; extra_args go to ComfyUI's main.py."""
    (base / "custom_nodes").mkdir(exist_ok=True)
    if not (base / "custom_nodes" / "sae_concepts").exists():
        (base / "custom_nodes" / "sae_concepts").symlink_to(REPO)
    port = free_port()
    env = dict(os.environ)
    if extra_pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [env.get("PYTHONPATH"), extra_pythonpath]))
    log = base / "server.log"
    with open(log, "w") as logf:
        proc = subprocess.Popen([sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
                                 "--front-end-root", str(frontend), "--database-url", "sqlite:///:memory:",
                                 "--disable-api-nodes", "--use-pytorch-cross-attention", "--disable-auto-launch",
                                 "--base-directory", str(base), *extra_args],
                                cwd=str(comfy_root), env=env, stdout=logf, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 600   # a loaded machine imports ComfyUI slowly
        while True:
            try:
                get(url + "/object_info/SAEConcepts_LoadSAE", timeout=5)
                break
            except Exception:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError("ComfyUI server did not start:\n" + log.read_text()[-4000:])
                time.sleep(0.5)
        # Two test processes (pytest -n 2) may draw the same free port: the server that answered must
        # be this one, which logs the address only once it has bound the port.
        while f"go to: {url}" not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"the ComfyUI server at {url} is not the one started here:\n"
                                   + log.read_text()[-4000:])
            time.sleep(0.2)
        yield {"url": url, "base": base, "log": log, "object_info": get(url + "/object_info", timeout=60)}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
