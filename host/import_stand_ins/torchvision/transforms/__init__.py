"""NOT torchvision.transforms: an import stand-in (see the package docstring)."""


def __getattr__(name):
    raise AttributeError(f"torchvision is not installed (sae-concepts import stand-in): transforms.{name} is not available")
