"""TEST-ONLY placeholder for torchvision.transforms.functional; see the package docstring."""


def __getattr__(name):
    raise AttributeError(f"torchvision placeholder (tests only): functional.{name} is not available")
