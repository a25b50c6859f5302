"""`sae-concepts`: the headless toolkit's one command."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def cmd_demo(a) -> int:
    from .demo import format_table, run_demo
    report = run_demo(Path(a.out), steps=a.steps, progress=not a.quiet)
    print("SYNTHETIC DEMO: planted concepts, not a diffusion model (see README)")
    print(format_table(report))
    print(f"SAE set: {Path(a.out) / 'demo_sae_set.safetensors'}")
    ok = all(r["recovered_atoms"] >= 0.9 for r in report["saes"])
    print("all planted dictionaries recovered" if ok else "WARNING: some planted atoms were not recovered")
    return 0 if ok else 1


def cmd_info(a) -> int:
    from ..sae_core import load_sae
    sae_set = load_sae(a.path)
    print(f"{a.path}: {len(sae_set)} SAE(s)")
    for e in sae_set:
        print(f"  {e.info.label()}: d={e.sae.d_in} n_f={e.sae.n_latents} k={e.sae.k} "
              f"source={e.info.source_format} training={e.info.training}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sae-concepts", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="train SAEs on built-in synthetic activations with planted concepts")
    d.add_argument("--out", default="sae_concepts_demo", help="output folder (resumes if it exists)")
    d.add_argument("--steps", type=int, default=800, help="training steps per SAE")
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    d.set_defaults(func=cmd_demo)
    i = sub.add_parser("info", help="describe an SAE file or folder in any supported format")
    i.add_argument("path")
    i.set_defaults(func=cmd_info)
    return p


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    try:
        return a.func(a)
    except (ValueError, OSError, RuntimeError) as e:
        print(f"sae-concepts {a.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
