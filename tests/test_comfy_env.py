"""Hosting ComfyUI in process without torchvision (host/comfy_env.py): the import stand-in serves
ComfyUI's own model code and nothing else. Each check runs in a fresh interpreter, so no other
test's imports decide the outcome."""
from __future__ import annotations

import subprocess
import sys

import pytest

from sae_concepts.host.comfy_env import torchvision_works

CHECK = """
from sae_concepts.host.comfy_env import import_comfy
import_comfy()
import importlib.util, sys
import comfy.sd, comfy.controlnet                     # ComfyUI's model code imported
assert importlib.util.find_spec("torchvision") is None, "the stand-in is still visible to find_spec"
from transformers.utils import is_torchvision_available
assert not is_torchvision_available(), "transformers takes the stand-in for torchvision"
try:
    import torchvision
except ImportError:
    pass
else:
    raise AssertionError("import torchvision succeeds outside ComfyUI's modules")
from transformers.models.bert import modeling_bert     # what failed: transformers' image utils
print("ok")
"""


def test_stand_in_serves_comfyui_only(comfy):
    if torchvision_works():
        pytest.skip("a real torchvision is installed here: the stand-in is not used")
    r = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]
