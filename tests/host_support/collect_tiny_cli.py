"""`sae-concepts` exactly as installed (its own main: options, checks, torchrun set-up, barrier,
prompt index), with collect's model loader swapped for the tests' tiny SD1.x (ComfyUI's classes,
random weights; text stand-in and TAESD VAE). For tests of the command's own logic, e.g. the
rank split under torchrun, where each rank loading the full-size random SD1.5 checkpoint held
~6 GiB (two at once). --checkpoint must still be given, as the command requires; it is not read.

    python tests/host_support/collect_tiny_cli.py collect --checkpoint tiny --prompts ... --out ...
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # tests/: random_models


def tiny_models(cfg):
    from random_models import build_random_sd1, build_random_taesd_vae, tiny_sd1_text
    return build_random_sd1(tiny=True, seed=0), tiny_sd1_text(), build_random_taesd_vae(seed=0)


if __name__ == "__main__":
    from sae_concepts.training.cli import main
    from sae_concepts.training.collect import collect

    collect.load_models = tiny_models   # collect() looks it up in its module when given no model
    sys.exit(main())
