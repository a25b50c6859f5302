"""`sae-concepts toyworld {train,evaluate}`: the Toy World model's recipe and its quality check."""
from __future__ import annotations

import argparse
from pathlib import Path


def cmd_train(a) -> int:
    from ...host.comfy_env import import_comfy
    from ..dataclass_cli import dataclass_from_args
    from .train import CHECKPOINT, ToyTrainConfig, export_weights, train
    import_comfy(cpu=True)
    cfg = dataclass_from_args(ToyTrainConfig, a)
    trainer = train(cfg, progress=not a.quiet)
    weights = export_weights(Path(cfg.out) / CHECKPOINT, Path(a.weights or Path(cfg.out) / "toyworld.safetensors"))
    print(f"toyworld: {trainer.step} steps, {trainer.seconds / 60:.1f} min of training; weights: {weights}")
    return 0


def register(sub) -> None:
    """Add the `toyworld` command (with its own subcommands) to the main CLI's subparsers."""
    from ..dataclass_cli import add_dataclass_args
    from .train import ToyTrainConfig
    tw = sub.add_parser("toyworld", help="the Toy World: a small SD1.x-topology model trained here on drawn scenes")
    tsub = tw.add_subparsers(dest="toyworld_command", required=True)
    t = tsub.add_parser("train", help="train (or resume) the Toy World model; writes <out>/toyworld.safetensors")
    add_dataclass_args(t, ToyTrainConfig)
    t.add_argument("--weights", default="", help="where to write the exported weights (default: <out>/toyworld.safetensors)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)
