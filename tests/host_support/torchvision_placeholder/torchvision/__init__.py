"""TEST-ONLY IMPORT PLACEHOLDER, NOT torchvision.

The registry's torchvision wheel is a CUDA build that cannot import against the CPU torch used
in tests. ComfyUI imports torchvision at module level for models SD1.x never uses (Cosmos,
Cascade), so the host tests put this folder on sys.path only when a real `import torchvision`
fails. Any attribute access raises, so nothing can silently use it.
"""
__version__ = "0.0.0+sae-concepts-test-placeholder"


def __getattr__(name):
    raise AttributeError(f"torchvision placeholder (tests only): torchvision.{name} is not available")
