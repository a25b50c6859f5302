"""Shared fixtures. Host tests (real ComfyUI) skip loudly when no ComfyUI is found."""
from __future__ import annotations

import gc
import os
import sys

import pytest
import torch

from sae_concepts.host.comfy_env import IMPORT_STAND_INS, candidate_paths, find_comfyui, torchvision_works

# torchvision's import stand-in (shipped: host/import_stand_ins), for subprocesses and servers
# the tests start when no real torchvision imports here.
PLACEHOLDER = str(IMPORT_STAND_INS)
COMFY_ROOT = find_comfyui()
SKIP_REASON = ("NO COMFYUI: host tests skipped. Export ComfyUI v0.8.0 to ~/comfy/ComfyUI or set "
               f"COMFYUI_PATH (looked in {', '.join(map(str, candidate_paths()))})")


# One intra-op thread per process unless OMP_NUM_THREADS says otherwise: the suite is mostly small
# models, and on a 2-core machine with the other core busy, two threads spend their time waiting
# for each other (test_host_nodes.py + test_host_sdxl.py: 284 and 528 s at two threads, 62 and
# 66 s at one, back to back on 2026-12-02). Set in the environment as well, so the CLI runs,
# torchrun ranks and ComfyUI servers the tests start inherit it.
if "OMP_NUM_THREADS" not in os.environ:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


# The README's command runs two test processes (pytest -n 2 --dist loadfile): every test is
# single-threaded (above), so one process leaves the second core idle. A file runs in one process,
# so what a module builds once (a server, a model) is built once, and the tests that load the
# full-size random SD1.5 (about 3 GiB a process) all live in one file, marked full_size_sd15, so two
# never run at once. That file is the longest, so it goes first (--no-loadscope-reorder: xdist would
# otherwise order files by their number of tests). (xdist's loadgroup would group across files, but
# with pytest 9 its group names never reach the scheduler: every test ran alone.)
FULL_SIZE_MARK = "full_size_sd15"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: item.get_closest_marker(FULL_SIZE_MARK) is None)   # stable


def pytest_report_header(config):
    return f"ComfyUI for host tests: {COMFY_ROOT or SKIP_REASON}"


# Probed once, before the stand-in can be on sys.path (the host's own probe, which also tells the
# stand-in from the real package).
REAL_TORCHVISION = torchvision_works()


def _torchvision_works() -> bool:
    return REAL_TORCHVISION


@pytest.fixture(scope="session")
def comfy():
    """ComfyUI imported in-process (CPU); its folder."""
    if COMFY_ROOT is None:
        pytest.skip(SKIP_REASON)
    from sae_concepts.host.comfy_env import import_comfy
    return import_comfy()   # puts the torchvision stand-in on sys.path itself where none works


@pytest.fixture(scope="session")
def tiny_model(comfy):
    from random_models import build_random_sd1
    return build_random_sd1(tiny=True, seed=0)


def release_models() -> None:
    """ComfyUI lets go of the models it sampled with, reference cycles are collected and glibc
    returns freed heap to the system."""
    if "comfy.model_management" in sys.modules:
        import comfy.model_management
        comfy.model_management.unload_all_models()
        comfy.model_management.cleanup_models()
    gc.collect()
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):   # not glibc: nothing to trim
        pass


@pytest.fixture(autouse=True, scope="module")
def release_models_after_each_module():
    """Between modules (after the full-size in-process U-Net test, then a module of its own, the
    process held 712 MiB without this, 557 MiB with it)."""
    yield
    release_models()
