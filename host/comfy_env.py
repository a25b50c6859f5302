"""Find and import ComfyUI for in-process use (the CLI and tests; inside ComfyUI nothing here runs).

ComfyUI is not on PyPI; it is found at $COMFYUI_PATH, else as the ComfyUI that holds this
plugin in custom_nodes/, else at ~/comfy/ComfyUI (comfy-cli's default).
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from ..sae_core.errors import SAEConceptsError

PLUGIN_ROOT = Path(__file__).resolve().parents[1]
IMPORT_STAND_INS = Path(__file__).resolve().parent / "import_stand_ins"
# How a user gets the ComfyUI this pack is tested with, into ~/comfy/ComfyUI (comfy-cli's default
# place; candidate_paths looks there after $COMFYUI_PATH and a custom_nodes parent). Said to the user, never run: nothing here fetches ComfyUI.
GET_COMFYUI = "git clone --depth 1 --branch v0.8.0 https://github.com/comfyanonymous/ComfyUI ~/comfy/ComfyUI"


class ComfyUINotFound(SAEConceptsError, RuntimeError):
    pass


def candidate_paths() -> list[Path]:
    paths = []
    if os.environ.get("COMFYUI_PATH"):
        paths.append(Path(os.environ["COMFYUI_PATH"]).expanduser())
    if PLUGIN_ROOT.parent.name == "custom_nodes":
        paths.append(PLUGIN_ROOT.parent.parent)
    paths.append(Path.home() / "comfy" / "ComfyUI")
    return paths


def find_comfyui() -> Path | None:
    for p in candidate_paths():
        if (p / "comfy" / "model_patcher.py").is_file() and (p / "nodes.py").is_file():
            return p.resolve()
    return None


def import_comfy(cpu: bool | None = None) -> Path:
    """Put ComfyUI on sys.path and configure it for in-process use; returns its folder."""
    root = find_comfyui()
    if root is None:
        raise ComfyUINotFound(
            "ComfyUI not found: set COMFYUI_PATH to a ComfyUI checkout, or get one with "
            f"`{GET_COMFYUI}` (looked in: {', '.join(map(str, candidate_paths()))})")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    if "comfy.model_management" not in sys.modules:
        # ComfyUI reads its settings from comfy.cli_args.args when comfy.model_management is first
        # imported. Only then, i.e. only when this process hosts ComfyUI itself (never inside a
        # running ComfyUI, where model_management is already loaded), are the two settings a
        # headless run needs set: the device, and PyTorch attention (xformers may be absent).
        from comfy.cli_args import args
        import torch
        args.cpu = (not torch.cuda.is_available()) if cpu is None else cpu
        args.use_pytorch_cross_attention = True
        logging.getLogger().addFilter(_optional_feature_notices)
        if not torchvision_works():
            import importlib
            use_torchvision_stand_in()
            for module in COMFY_TORCHVISION_IMPORTERS:   # these import comfy.model_management first
                importlib.import_module(module)
            drop_torchvision_stand_in()
    import comfy.model_management  # noqa: F401  (initialises devices with the args above)
    return root


def torchvision_works() -> bool:
    """Whether a real torchvision imports here (a CUDA-only wheel beside a CPU torch fails)."""
    import importlib.util
    mod = sys.modules.get("torchvision")
    if mod is not None:
        return not getattr(mod, "SAE_CONCEPTS_STAND_IN", False)
    if importlib.util.find_spec("torchvision") is None:
        return False
    try:
        import torchvision
        return not getattr(torchvision, "SAE_CONCEPTS_STAND_IN", False)   # the stand-in on PYTHONPATH
    except Exception:   # noqa: BLE001 - any failure to import means: no usable torchvision
        forget_torchvision()   # a half-imported broken package must not shadow the stand-in
        return False


def forget_torchvision() -> None:
    """Drop `torchvision` and its submodules from sys.modules."""
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]


def use_torchvision_stand_in() -> None:
    """Make `import torchvision` succeed with the stand-in (host/import_stand_ins: every attribute
    raises), so ComfyUI's model code imports in a headless process without torchvision. Only
    the CLI, benchmarks and tests host ComfyUI this way; a ComfyUI server never runs this."""
    try:   # transformers (which ComfyUI imports) probes for torchvision once and caches the answer
        from transformers.utils import is_torchvision_available
        is_torchvision_available()   # ... so it must ask before the stand-in is there
    except ImportError:
        pass
    if str(IMPORT_STAND_INS) not in sys.path:
        sys.path.insert(0, str(IMPORT_STAND_INS))   # first: ahead of a broken installed wheel


# The ComfyUI modules a headless host imports that import torchvision at module level (v0.8.0:
# comfy.sd pulls comfy/ldm/cosmos, cascade/stage_c_coder and ace's VAE; comfy.controlnet pulls
# cascade/controlnet). Imported once under the stand-in, they keep it; nothing else gets it.
COMFY_TORCHVISION_IMPORTERS = ("comfy.sd", "comfy.controlnet")


def drop_torchvision_stand_in() -> None:
    """Once ComfyUI's model code is imported (its modules keep the stand-in they bound), take the
    stand-in off sys.path and out of sys.modules: other libraries probe for torchvision
    (transformers' is_torchvision_available finds any importable `torchvision`) and would take the
    stand-in for a real one. From here `import torchvision` fails as it does without ComfyUI."""
    while str(IMPORT_STAND_INS) in sys.path:
        sys.path.remove(str(IMPORT_STAND_INS))
    if getattr(sys.modules.get("torchvision"), "SAE_CONCEPTS_STAND_IN", False):
        forget_torchvision()


# ComfyUI logs these at import when optional packages are absent; they concern features a
# headless collect/test run never uses (fp8/fp4 kernels, audio models), so hosting ComfyUI here
# drops them instead of printing an ERROR line on every successful run.
OPTIONAL_FEATURE_NOTICES = ("Failed to import comfy_kitchen", "No comfy kitchen", "torchaudio missing")


def _optional_feature_notices(record) -> bool:
    return not str(record.msg).startswith(OPTIONAL_FEATURE_NOTICES)
