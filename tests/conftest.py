"""Shared fixtures. Host tests (real ComfyUI) skip loudly when no ComfyUI is found."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from sae_concepts.host.comfy_env import candidate_paths, find_comfyui

from sae_concepts.host.comfy_env import IMPORT_STAND_INS

# torchvision's import stand-in (shipped: host/import_stand_ins), for subprocesses and servers
# the tests start when no real torchvision imports here.
PLACEHOLDER = str(IMPORT_STAND_INS)
COMFY_ROOT = find_comfyui()
SKIP_REASON = ("NO COMFYUI: host tests skipped. Export ComfyUI v0.8.0 to ~/comfy/ComfyUI or set "
               f"COMFYUI_PATH (looked in {', '.join(map(str, candidate_paths()))})")


def pytest_report_header(config):
    return f"ComfyUI for host tests: {COMFY_ROOT or SKIP_REASON}"


def _probe_torchvision() -> bool:
    if importlib.util.find_spec("torchvision") is None:
        return False
    try:
        import torchvision  # noqa: F401
        return True
    except Exception:  # a CUDA-only wheel against the CPU torch fails at import
        return False


# Probed once, before the placeholder can be on sys.path (after that the probe would find it).
REAL_TORCHVISION = _probe_torchvision()


def _torchvision_works() -> bool:
    return REAL_TORCHVISION


@pytest.fixture(scope="session")
def comfy():
    """ComfyUI imported in-process (CPU); its folder."""
    if COMFY_ROOT is None:
        pytest.skip(SKIP_REASON)
    from sae_concepts.host.comfy_env import import_comfy
    extra = () if _torchvision_works() else (PLACEHOLDER,)
    return import_comfy(extra_sys_paths=extra)


@pytest.fixture(scope="session")
def tiny_model(comfy):
    from random_models import build_random_sd1
    return build_random_sd1(tiny=True, seed=0)
