"""SAE weights under ComfyUI's model management, not beside it.

Each SAE a steer uses gets a small ModelPatcher of its own (load/offload device = the model's),
attached to the steered clone as an additional model. ComfyUI's sampler then loads it together
with the U-Net (`load_models_gpu([model] + model.get_nested_additional_models())`), so its
memory is counted when ComfyUI decides what fits, it follows the model to its device, and it is
offloaded or freed with everything else (also by "Unload models"). One patcher per SAE module
and device pair, so two steers on the same SAE share one copy.
"""
from __future__ import annotations

import copy
import logging
import weakref

import torch
import comfy.model_patcher

log = logging.getLogger("sae_concepts")

ADDITIONAL_MODELS_KEY = "sae_concepts"
_patchers: "weakref.WeakKeyDictionary[torch.nn.Module, dict]" = weakref.WeakKeyDictionary()


def sae_patcher(sae: torch.nn.Module, model) -> comfy.model_patcher.ModelPatcher:
    """The ModelPatcher that manages `sae`'s weights on `model`'s devices."""
    per_device = _patchers.setdefault(sae, {})
    key = (str(model.load_device), str(model.offload_device))
    if key not in per_device:
        per_device[key] = comfy.model_patcher.ModelPatcher(sae, load_device=model.load_device,
                                                           offload_device=model.offload_device)
    return per_device[key]


def attach_saes(model, saes) -> None:
    """Register `saes` as additional models of the (already cloned) ModelPatcher `model`."""
    attached = list(model.get_additional_models_with_key(ADDITIONAL_MODELS_KEY))
    for sae in saes:
        p = sae_patcher(sae, model)
        if not any(a.model is sae for a in attached):   # clone() copies patchers: compare modules
            attached.append(p)
    model.set_additional_models(ADDITIONAL_MODELS_KEY, attached)


class DeviceFallback:
    """Where ComfyUI left an SAE elsewhere than the activations (a partial low-VRAM load, or a
    model sampled outside ComfyUI's sampler), a copy on the activations' device is made once
    and kept for the edit's lifetime, with a warning: correct, but not counted by ComfyUI."""

    def __init__(self):
        self._copies: dict = {}

    def on(self, sae: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        if sae.W_dec.device == device:
            return sae
        key = (id(sae), str(device))
        if key not in self._copies:
            log.warning(f"sae_concepts: an SAE was not loaded to {device} by ComfyUI's model management "
                        f"(it is on {sae.W_dec.device}); using a private copy there")
            self._copies[key] = copy.deepcopy(sae).to(device)   # .to() alone would move the shared one
        return self._copies[key]
