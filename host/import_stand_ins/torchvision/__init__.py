"""NOT torchvision: an import stand-in (see sae_concepts/host/import_stand_ins/__init__.py).
Any attribute access raises, so nothing can use it by accident."""
__version__ = "0.0.0+sae-concepts-import-stand-in"
SAE_CONCEPTS_STAND_IN = True


def __getattr__(name):
    raise AttributeError(f"torchvision is not installed (sae-concepts import stand-in): torchvision.{name} is not available")
