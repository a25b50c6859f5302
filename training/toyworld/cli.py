"""`sae-concepts toyworld {train,export,evaluate}`: the Toy World model's recipe and its quality check."""
from __future__ import annotations

from pathlib import Path

from ...sae_core.errors import ConfigError


def cmd_train(a) -> int:
    from ...host.comfy_env import import_comfy
    from ..dataclass_cli import dataclass_from_args
    from .train import CHECKPOINT, ToyTrainConfig, check_train_config, check_weights_out, export_weights, train, training_device
    cfg = dataclass_from_args(ToyTrainConfig, a)
    if a.stop_at < 0:
        raise ConfigError(f"--stop-at must be 0 (run to --steps) or a step, got {a.stop_at}")
    check_train_config(cfg)
    check_weights_out(Path(a.weights or Path(cfg.out) / "toyworld.safetensors"), cfg.init_from)   # before hours of training
    import_comfy(cpu=training_device(cfg.device).type == "cpu")   # checked before ComfyUI looks for a GPU
    trainer = train(cfg, progress=not a.quiet, stop_at=a.stop_at or None)
    weights = export_weights(Path(cfg.out) / CHECKPOINT, Path(a.weights or Path(cfg.out) / "toyworld.safetensors"))
    print(f"toyworld: {trainer.step} steps, {trainer.seconds / 60:.1f} min of training; weights: {weights}")
    return 0


def cmd_export(a) -> int:
    from .train import CHECKPOINT, export_weights
    weights = export_weights(Path(a.out) / CHECKPOINT, Path(a.weights or Path(a.out) / "toyworld.safetensors"))
    print(f"toyworld: weights: {weights}")
    return 0


def cmd_evaluate(a) -> int:
    from ...host.comfy_env import import_comfy
    from ..dataclass_cli import dataclass_from_args
    from .evaluate import ToyEvalConfig, evaluate_model
    import_comfy(cpu=True)
    import torch
    if a.threads < 1:
        raise ConfigError(f"--threads must be 1 or more, got {a.threads}")
    torch.set_num_threads(a.threads)
    cfg = dataclass_from_args(ToyEvalConfig, a)
    s = evaluate_model(cfg, progress=not a.quiet)["summary"]
    print(f"toyworld quality on {cfg.prompts} held-out prompts ({cfg.steps} steps {cfg.sampler_name}/"
          f"{cfg.scheduler}, cfg {cfg.cfg}): colour+shape {s['colour_shape']:.1%} (1 obj "
          f"{s['colour_shape_1obj']:.1%}, 2 obj {s['colour_shape_2obj']:.1%}), style {s['style']:.1%}, "
          f"count {s['count']:.1%} (too many {s['too_many']:.1%}, too few {s['too_few']:.1%}; a colour+shape "
          f"found twice {s['copy']:.1%}); bar {'passed' if s['passes_bar'] else 'NOT passed'}; metrics: {cfg.out}")
    return 0


def register(sub) -> None:
    """Add the `toyworld` command (with its own subcommands) to the main CLI's subparsers."""
    from ..dataclass_cli import add_dataclass_args
    from .evaluate import ToyEvalConfig
    from .train import ToyTrainConfig
    tw = sub.add_parser("toyworld", help="the Toy World: a small SD1.x-topology model trained here on drawn scenes")
    tsub = tw.add_subparsers(dest="toyworld_command", required=True, help="Toy World step to run")
    t = tsub.add_parser("train", help="train (or resume) the Toy World model; writes <out>/toyworld.safetensors")
    add_dataclass_args(t, ToyTrainConfig)
    t.add_argument("--stop-at", type=int, default=0,
                   help="end this run at this step (the lr schedule still spans --steps); 0: run to --steps")
    t.add_argument("--weights", default="", help="where to write the exported weights (default: <out>/toyworld.safetensors)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)
    x = tsub.add_parser("export", help="write the shipped weights file (EMA, fp16) from a run's checkpoint")
    x.add_argument("--out", required=True, help="run folder (with checkpoint.safetensors)")
    x.add_argument("--weights", default="", help="weights file to write (default: <out>/toyworld.safetensors)")
    x.set_defaults(func=cmd_export)
    e = tsub.add_parser("evaluate", help="the quality bar: sample held-out prompts, judge them with the detector")
    add_dataclass_args(e, ToyEvalConfig)
    e.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    e.set_defaults(func=cmd_evaluate)
    from .paper import register_paper
    register_paper(tsub)
