"""`sae-concepts`: the headless toolkit's one command."""
from __future__ import annotations

import argparse
import os
import sys
import textwrap
from pathlib import Path

from ..sae_core.errors import ConfigError


def cmd_demo(a) -> int:
    from .demo.demo import DEAD_NOTE, DEFAULT_EPOCHS, format_truth, run_demo
    from .evaluate.evaluate import METRICS_LEGEND, block_then_t_down, format_table
    if a.epochs is not None and a.epochs <= 0:
        raise ConfigError(f"--epochs must be positive, got {a.epochs}")
    if a.world == "toy":
        # The toy demo has fixed sizes and no smoke run: say so rather than ignore what was asked.
        synthetic_only = [flag for flag, given in (("--epochs", a.epochs is not None),
                                                   ("--comfyui", a.comfyui is not None),
                                                   ("--keep-activations", a.keep_activations)) if given]
        if synthetic_only:
            raise ConfigError(f"{', '.join(synthetic_only)}: for the synthetic world only; add --world synthetic, "
                              f"or leave {'them' if len(synthetic_only) > 1 else 'it'} out for the Toy World demo")
        from .demo.toy_demo import run_toy_demo, toy_demo_intro, toy_world_unavailable
        reason = toy_world_unavailable()
        if reason is None:
            from .toyworld.paper.run import print_paper_summary
            print(toy_demo_intro(Path(a.out)), flush=True)
            print_paper_summary(run_toy_demo(Path(a.out), progress=not a.quiet))
            return 0
        print(f"Toy World unavailable: {reason}; running the synthetic world instead")
        a.world = "synthetic"
    summary = run_demo(Path(a.out), epochs=a.epochs or DEFAULT_EPOCHS, comfyui=a.comfyui or "off", progress=not a.quiet,
                       keep_activations=a.keep_activations, world=a.world)
    print("SYNTHETIC DEMO: planted concepts laid out in space, not a diffusion model (see README)")
    print(format_table(sorted(summary["metrics"], key=block_then_t_down)))
    print(textwrap.fill(METRICS_LEGEND, 100))
    print(textwrap.fill(DEAD_NOTE, 100))
    print(format_truth(sorted(summary["truth"], key=block_then_t_down)))
    smoke = summary["comfyui_smoke"]
    if smoke and "vectors" in smoke:
        print(f"ComfyUI collection smoke run: {smoke['vectors']}")
    print(f"report: {Path(a.out) / 'report' / 'index.html'}")
    ok = all(r["recovered"] >= 0.9 and r["labels_right"] >= 0.9 for r in summary["truth"])
    print("all planted concepts recovered and labelled" if ok else "WARNING: some planted concepts were missed")
    return 0 if ok else 1


def cmd_collect(a) -> int:
    from .collect.collect import CollectConfig, check_collect_config, collect, distributed_from_env, write_prompt_index
    from ..host.comfy_env import import_comfy
    from .dataclass_cli import dataclass_from_args
    from .storage.prompts import read_prompts
    cfg = dataclass_from_args(CollectConfig, a)
    if not (cfg.checkpoint or cfg.diffusion_model) or not cfg.prompts:
        raise ConfigError("collect needs --checkpoint and --prompts (or --diffusion-model with --text-encoders "
                          "instead of --checkpoint)")
    check_collect_config(cfg)   # bad options and prompt files are refused before ComfyUI is imported
    read_prompts(cfg.prompts)
    local = os.environ.get("LOCAL_RANK")
    if local is not None and "CUDA_VISIBLE_DEVICES" not in os.environ:
        os.environ["CUDA_VISIBLE_DEVICES"] = local   # one GPU per torchrun process, before CUDA starts
    import_comfy()
    rank, world = distributed_from_env()
    out = collect(cfg, rank=rank, world=world, progress=not a.quiet)
    if world > 1:
        import torch.distributed as dist
        dist.barrier()
    if rank == 0:
        write_prompt_index(out)
        print(f"activations in {out}")
    return 0


def cmd_train(a) -> int:
    from ..sae_core import TrainConfig
    from .collect.collect import distributed_from_env
    from .dataclass_cli import dataclass_from_args
    from .train.train import TrainCommandConfig, train_saes
    cmd = dataclass_from_args(TrainCommandConfig, a)
    if not cmd.shards:
        raise ConfigError("train needs --shards (a folder from `sae-concepts collect`)")
    rank, _ = distributed_from_env()
    entries = train_saes(cmd, dataclass_from_args(TrainConfig, a), progress=not a.quiet)
    if rank == 0:
        for e in entries:
            tr = e.info.training
            print(f"{e.info.label()}: FVU {tr['fvu']:.3f}, L0 {tr['l0']:.1f}, dead {tr['dead_fraction']:.3f}")
        print(f"SAE set: {cmd.out}")
    return 0


def cmd_itda(a) -> int:
    from .dataclass_cli import dataclass_from_args
    from .itda.itda import ItdaCommandConfig, build_itda_set
    cmd = dataclass_from_args(ItdaCommandConfig, a)
    if not cmd.shards:
        raise ConfigError("itda needs --shards (a folder from `sae-concepts collect`)")
    for e in build_itda_set(cmd, progress=not a.quiet):
        print(f"{e.info.label()}: {e.sae.n_latents} atoms, {e.info.training['seconds']} s")
    print(f"ITDA set: {cmd.out}")
    return 0


def cmd_dictionary(a) -> int:
    from .dataclass_cli import dataclass_from_args
    from .dictionary.dictionary import DictionaryConfig, build_dictionary
    from .segment.segment import SegmentConfig
    cfg = dataclass_from_args(DictionaryConfig, a)
    d = build_dictionary(cfg, progress=not a.quiet, segment=dataclass_from_args(SegmentConfig, a))
    for e in d.entries:
        print(f"{e.block} t={e.t} {e.cond}: {len(e.concepts)} labelled concepts")
    print(f"dictionary: {cfg.out}")
    return 0


def cmd_segment(a) -> int:
    from .dataclass_cli import dataclass_from_args
    from .segment.segment import DONE_FILE, SegmentConfig, segment_images
    if not a.shards:
        raise ConfigError("segment needs --shards (a folder from `sae-concepts collect` with its images)")
    masks = segment_images(a.shards, a.masks, dataclass_from_args(SegmentConfig, a), progress=not a.quiet)
    done = list(masks.glob(f"*/{DONE_FILE}"))
    n_masks = len(list(masks.glob("*/*.png")))
    print(f"masks: {masks} ({len(done)} images, {n_masks} object masks)")
    return 0


def cmd_evaluate(a) -> int:
    from .dataclass_cli import dataclass_from_args
    import json
    from .evaluate.evaluate import METRICS_LEGEND, EvaluateConfig, evaluate, format_masks, format_table
    cfg = dataclass_from_args(EvaluateConfig, a)
    print(format_table(evaluate(cfg)))
    print(textwrap.fill(METRICS_LEGEND, 100))
    masks = json.loads(Path(cfg.out).read_text()).get("masks")
    if masks:
        print(format_masks(masks))
    print(f"metrics: {cfg.out}")
    return 0


def cmd_report(a) -> int:
    from .report.report import build_report
    page = build_report(Path(a.out), a.sae, a.dictionary, a.metrics, a.shards, images_dir=a.images or None,
                        provenance_shards=a.provenance_shards or None)
    print(f"report: {page}")
    return 0


def cmd_info(a) -> int:
    from ..sae_core import load_sae
    sae_set = load_sae(a.path)
    print(f"{a.path}: {len(sae_set)} SAE(s)")
    for e in sae_set:
        print(f"  {e.info.label()}: d={e.sae.d_in} n_f={e.sae.n_latents} k={e.sae.k} "
              f"source={e.info.source_format} training={e.info.training}")
    return 0


class DefaultsShown(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where None means 'not given' (the help says the default)."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sae-concepts", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    from .demo.demo import DEFAULT_EPOCHS, WORLDS
    d = sub.add_parser("demo", help="the paper's loop on a built-in world: the shipped Toy World model, or planted "
                                    "synthetic activations checked against the truth",
                       formatter_class=DefaultsShown)
    d.add_argument("--out", default="sae_concepts_demo", help="output folder (resumes if it exists)")
    d.add_argument("--world", choices=WORLDS, default="toy",
                   help="toy: the paper's loop on the shipped Toy World diffusion model (needs ComfyUI; a few CPU "
                        "minutes; falls back to synthetic, saying why in one line, where it cannot run); synthetic: "
                        "planted concepts laid out in space (activations, masks and labels known; every stage checked "
                        "against them; the tests' world)")
    d.add_argument("--epochs", type=int, default=None,
                   help=f"synthetic world: training passes over the train split (default {DEFAULT_EPOCHS})")
    d.add_argument("--keep-activations", action="store_true",
                   help="synthetic world: keep the train and held-out activations (~150 MB; by default removed "
                        "once used)")
    d.add_argument("--comfyui", choices=["auto", "on", "off"], default=None,
                   help="synthetic world: also collect for real through ComfyUI on a random-weight SD1.5 checkpoint "
                        "(writes 1.2 GiB once, U-Net in fp8, and takes minutes on a CPU; auto: if ComfyUI is found "
                        "and importable; default off)")
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    d.set_defaults(func=cmd_demo)
    from ..sae_core import TrainConfig
    from .collect.collect import CollectConfig
    from .dataclass_cli import add_dataclass_args
    from .dictionary.dictionary import DictionaryConfig
    from .itda.itda import ItdaCommandConfig
    from .segment.segment import SegmentConfig
    from .train.train import TrainCommandConfig

    def stage(name, help, configs, func, extra=None, bars="no progress bars"):
        """A pipeline stage whose options are its config dataclasses' fields, plus --quiet."""
        s = sub.add_parser(name, help=help)
        if extra:
            extra(s)
        for config in configs:
            add_dataclass_args(s, config)
        s.add_argument("--quiet", action="store_true", help=bars)
        s.set_defaults(func=func)

    stage("collect", "record Delta at transformer blocks while sampling an SD1.x, SDXL or Flux model",
          [CollectConfig], cmd_collect, bars="no progress bar")
    stage("train", "train one SAE per (block, t, cond) from collected shards",
          [TrainCommandConfig, TrainConfig], cmd_train)
    stage("itda", "grow one ITDA dictionary (real activations as atoms) per (block, t, cond)",
          [ItdaCommandConfig], cmd_itda)
    stage("dictionary", "label concepts with the objects their activation maps cover",
          [DictionaryConfig, SegmentConfig], cmd_dictionary)

    def segment_folders(s):
        s.add_argument("--shards", default="", help="collection folder (with images/)")
        s.add_argument("--masks", default="", help="masks folder to write (default: <shards>/masks)")
    stage("segment", "object masks for collected images: tags -> Grounding DINO -> SAM",
          [SegmentConfig], cmd_segment, extra=segment_folders)
    from .evaluate.evaluate import EvaluateConfig
    ev = sub.add_parser("evaluate", help="FVU, L0, dead fraction, dictionary quality, composition IoU")
    add_dataclass_args(ev, EvaluateConfig)
    ev.set_defaults(func=cmd_evaluate)
    rp = sub.add_parser("report", help="static HTML report with plots and concept cards")
    rp.add_argument("--sae", required=True, help="SAE set file")
    rp.add_argument("--dictionary", required=True, help="concept dictionary file")
    rp.add_argument("--metrics", required=True, help="metrics.json from evaluate")
    rp.add_argument("--shards", required=True, help="evaluation collection folder (for patches and maps)")
    rp.add_argument("--images", default="", help="folder of <id>.png images (default: <shards>/images)")
    rp.add_argument("--provenance-shards", default="", help="for an ITDA set: the collection it was built from, "
                    "whose images show each atom's source patch (default: the folder its file names)")
    rp.add_argument("--out", default="report", help="report folder (default: report)")
    rp.set_defaults(func=cmd_report)
    i = sub.add_parser("info", help="describe an SAE file or folder in any supported format")
    i.add_argument("path", help="SAE file or folder (native, SDLens, sparsify or SAELens)")
    i.set_defaults(func=cmd_info)
    from .toyworld.cli import register as register_toyworld
    register_toyworld(sub)
    return p


def main(argv=None) -> int:
    from ..sae_core.errors import SAEConceptsError
    a = build_parser().parse_args(argv)
    try:
        return a.func(a)
    except (SAEConceptsError, OSError) as e:
        # Something the user can fix (a bad file, option or output place, a full disk): one line,
        # no traceback, the same exit status as argparse's own usage errors. Anything else is a
        # bug and keeps its traceback.
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"sae-concepts {a.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
