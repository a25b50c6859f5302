"""TEST-ONLY ComfyUI nodes (never shipped: they live under tests/ and are linked into a temporary
custom_nodes folder by tests/test_flux_server.py). A real Flux cannot be loaded here (no weights;
a random one through UNETLoader is >1 GB), so these stand in for UNETLoader and the text encoders:
a tiny random Flux from ComfyUI's own classes, and random conditioning fixed by the prompt's text."""
import sys
from pathlib import Path

TESTS = str(Path(__file__).resolve().parents[2])
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)

from random_models import build_random_flux, flux_conditioning  # noqa: E402


class TinyFluxTestOnly:
    CATEGORY = "sae_concepts_test_only"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1})}}

    def build(self, seed):
        return (build_random_flux(seed=seed),)


class RandomFluxConditioningTestOnly:
    CATEGORY = "sae_concepts_test_only"
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": ("STRING", {"default": "", "multiline": True})}}

    def encode(self, text):
        return (flux_conditioning(text),)


NODE_CLASS_MAPPINGS = {"SAEConceptsTest_TinyFlux": TinyFluxTestOnly,
                       "SAEConceptsTest_RandomFluxConditioning": RandomFluxConditioningTestOnly}
