"""`sae-concepts toyworld paper`: the stages in order, the tables and report, and the command."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch

from ....sae_core.atomic import write_text_atomic

from .composition import add_style_labels, run_composition, style_edit_size
from ....host.toyworld.sampling import weights_digest
from .config import ToyPaperConfig, check_paper_config, check_resume, parse_betas
from .figure import condition_figure, spatial_figure
from .sensitivity import run_sensitivity
from .steering import run_steering
from .tables import add_to_report, condition_caption, reading_lines, tables_markdown, without_reading


# -- the command ------------------------------------------------------------------------------

def run_paper(cfg: ToyPaperConfig, progress: bool = True) -> dict:
    from ....host.toyworld.comfy_parts import load_toy_parts
    from ....host.toyworld.sampling import weights_metadata
    check_paper_config(cfg)
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    check_resume(cfg, out / "paper_config.json")
    write_text_atomic(out / "paper_config.json",
                      json.dumps({**asdict(cfg), "weights_sha256": weights_digest(cfg.weights)}, indent=1))
    model, clip, vae = load_toy_parts(cfg.weights)
    comp = run_composition(cfg, model, clip, vae, progress)
    steering = sensitivity = None
    if not cfg.skip_steering:
        heldout = Path(comp["splits"]["heldout"])
        steer_dict = add_style_labels(comp["sae"], comp["dictionary"], heldout, heldout / "masks",
                                      out / "concept_dictionary_with_styles.json")
        steering = run_steering(cfg, model, clip, comp["sae"], steer_dict, progress)
        sensitivity = run_sensitivity(cfg, model, clip, progress)
    meta = weights_metadata(cfg.weights)
    # A fine-tune's file records only its own stage's steps: say so, not "step 5000" for a model trained far longer.
    trained = f"step {meta.get('step')}" + (" of its last fine-tuning stage" if meta.get("init_from_sha256") else "")
    info = {"weights": Path(cfg.weights).name, "step": meta.get("step"), "trained": trained, "steps": cfg.steps, "cfg": cfg.cfg,
            "machine": machine_description(cfg.threads),
            "images": f"{cfg.train_images} train / {cfg.heldout_images} dictionary / {cfg.eval_images} eval images, "
                      f"{cfg.steer_images} per steering condition"}
    rows = json.loads(Path(comp["metrics"]).read_text())["rows"]
    edit_size = style_edit_size(comp["sae"], comp["splits"]["eval"])
    md = tables_markdown(rows, steering, info, edit_size, sensitivity)
    write_text_atomic(out / "paper_tables.md", md)
    from ...report.report import build_report
    index = build_report(out / "report", comp["sae"], comp["dictionary"], comp["metrics"], comp["splits"]["eval"],
                         comp["eval_object_masks"])
    pics = []
    if steering:
        import shutil
        beta = max(parse_betas(cfg.spatial_betas, "--spatial-betas"))
        figure = spatial_figure(out, beta, title=f"Spatial steering, {Path(cfg.weights).name} ({trained}): "
                                                 f"put an object not in the prompt into a quadrant (both CFG rows)")
        if figure is not None:
            shutil.copy(figure, out / "report" / figure.name)
            pics.append((figure.name, "The unsteered images, then the same seeds steered in each window: one "
                                      "column per task (the object asked for, and the quadrant).", False))
        for c in steering["conditions"]:
            picture = condition_figure(out, c, condition_caption(c))
            if picture is not None:
                pics.append((picture.name, condition_caption(c), True))
    add_to_report(index, md, pics)
    summary = {"tables": str(out / "paper_tables.md"), "report": str(index), "composition": rows,
               "steering": None if steering is None else [{k: v for k, v in c.items() if k != "images"}
                                                          for c in steering["conditions"]],
               "sensitivity": sensitivity,
               "unsteered_success": None if steering is None else steering["unsteered_success"],
               "reading": reading_lines(rows, steering, sensitivity)}
    write_text_atomic(out / "paper_summary.json", json.dumps(summary, indent=1))
    return summary


def machine_description(threads: int) -> str:
    """Where the tables were measured, read off this machine (not assumed)."""
    import os
    import platform
    cpu = platform.processor() or platform.machine()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()   # this process's
    return f"{cores} CPU cores ({cpu}), {threads} torch thread{'s' if threads != 1 else ''}"


def cmd_paper(a) -> int:
    from ....host.comfy_env import import_comfy
    from ...dataclass_cli import dataclass_from_args
    cfg = dataclass_from_args(ToyPaperConfig, a)
    check_paper_config(cfg)   # before ComfyUI is imported: a bad setting is refused at once
    import_comfy(cpu=True)
    print_paper_summary(run_paper(cfg, progress=not a.quiet))
    return 0


def print_paper_summary(summary: dict) -> None:
    """The tables, then their reading again (the last thing on the screen) and the report."""
    print(without_reading(Path(summary["tables"]).read_text()))
    if summary.get("reading"):
        print("In short:\n" + "\n".join(summary["reading"]))
        print("What these mean for the shipped Toy World model: README, 'The paper on the Toy World'; "
              "its limits: host/toyworld/MODEL_CARD.md.")
    print(f"report: {summary['report']}")


def register_paper(tsub) -> None:
    """`sae-concepts toyworld paper` (added to the toyworld subcommands)."""
    from ...dataclass_cli import add_dataclass_args
    p = tsub.add_parser("paper", help="the paper's findings on the Toy World: composition IoU by block and t, "
                                      "spatial / style / negative steering tables (resumable)")
    add_dataclass_args(p, ToyPaperConfig)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_paper)
