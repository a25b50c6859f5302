"""TEST-ONLY placeholder for torchvision.transforms; see the package docstring."""


def __getattr__(name):
    raise AttributeError(f"torchvision placeholder (tests only): transforms.{name} is not available")
