"""`sae-concepts collect`: run an SD1.x, SDXL or Flux model with ComfyUI's own code and record Delta.

Delta = output - input of the chosen blocks (or the block output, --quantity output), at the
steps nearest to the chosen timestep buckets, cond and uncond rows kept apart, recorded through
the very block patch the steering nodes use (host/block_patch.py). On Flux only image tokens
are recorded, one row per token of the 2x2-patch grid. Output: sharded fp16 safetensors +
manifests (training/storage/shards.py) and, per prompt, the final image for the dictionary stage.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ...host.loaders import load_checkpoint  # noqa: F401  (the CLI's loader, re-exported for callers)
from ...sae_core.atomic import atomic_path, check_writable
from ..storage.prompts import read_prompts
from ..storage.shards import ShardWriter, activation_key
from ...sae_core.errors import SAEConceptsError, finite, require


@dataclass
class CollectConfig:
    checkpoint: str = field(default="", metadata={"help": "checkpoint file (.safetensors / .ckpt): SD1.x, SDXL "
                                                         "or an all-in-one Flux file"})
    diffusion_model: str = field(default="", metadata={"help": "instead of --checkpoint: a diffusion-model file "
                                                              "(as UNETLoader reads, e.g. flux1-dev.safetensors, "
                                                              "sd3.5_large.safetensors)"})
    text_encoders: str = field(default="", metadata={"help": "with --diffusion-model: comma-separated text-encoder "
                                                            "files (Flux: clip_l and t5xxl; SD3: any of clip_l, "
                                                            "clip_g, t5xxl)"})
    vae: str = field(default="", metadata={"help": "with --diffusion-model: VAE file (images are saved only with one)"})
    weight_dtype: str = field(default="default", metadata={"help": "diffusion model weights, as UNETLoader's "
                                                              "weight_dtype: default (ComfyUI's choice: float32 on "
                                                              "CPU), fp32, fp16, bf16, fp8_e4m3fn, fp8_e5m2 (a quarter "
                                                              "of float32's memory, cast per layer as it runs)"})
    prompts: str = field(default="", metadata={"help": "prompt file: .txt, .jsonl or .csv"})
    out: str = field(default="activations", metadata={"help": "output folder (resumes if it exists)"})
    blocks: str = field(default="", metadata={"help": "comma-separated blocks, ComfyUI paths or diffusers names "
                                                     "(default: the paper's three on SD1.x, SDLens's four on SDXL, "
                                                     "double_blocks.18 on Flux, joint_blocks.12 on SD3)"})
    quantity: str = field(default="delta", metadata={"help": "delta (output - input, the paper's) or output (the "
                                                            "block's output residual stream, as Shabalin et al.)"})
    guidance: float = field(default=3.5, metadata={"help": "Flux-dev guidance embedding (FluxGuidance); other "
                                                          "families ignore it"})
    timesteps: str = field(default="1.0,0.5,0.0", metadata={"help": "paper's t buckets (1.0 = first step)"})
    steps: int = field(default=50, metadata={"help": "sampling steps"})
    cfg: float = field(default=7.5, metadata={"help": "classifier-free guidance scale"})
    sampler: str = field(default="ddim", metadata={"help": "ComfyUI sampler name"})
    scheduler: str = field(default="ddim_uniform", metadata={"help": "ComfyUI scheduler name"})
    width: int = field(default=512, metadata={"help": "image width in pixels"})
    height: int = field(default=512, metadata={"help": "image height in pixels"})
    batch_size: int = field(default=1, metadata={"help": "prompts sampled together"})
    prompts_per_shard: int = field(default=64, metadata={"help": "prompts per shard file"})
    positions: int = field(default=0, metadata={"help": "positions kept per image and key (0 = all)"})
    seed: int = field(default=0, metadata={"help": "prompt i uses seed + i"})
    negative_prompt: str = field(default="", metadata={"help": "negative prompt (uncond)"})
    save_images: bool = field(default=True, metadata={"help": "decode and save final images"})
    limit: int = field(default=0, metadata={"help": "use only the first N prompts (0 = all)"})


class CollectError(SAEConceptsError, ValueError):
    pass


def load_models(cfg: CollectConfig):
    """(model, clip, vae) from --checkpoint, or from --diffusion-model + --text-encoders (+ --vae)."""
    from ...host.loaders import load_checkpoint, load_parts
    if bool(cfg.checkpoint) == bool(cfg.diffusion_model):
        raise CollectError("give either --checkpoint or --diffusion-model (with --text-encoders), not "
                           + ("both" if cfg.checkpoint else "neither"))
    if cfg.checkpoint:
        return load_checkpoint(cfg.checkpoint, cfg.weight_dtype)
    return load_parts(cfg.diffusion_model, [t.strip() for t in cfg.text_encoders.split(",") if t.strip()], cfg.vae,
                      cfg.weight_dtype)


def bucket_sigmas(model, cfg: CollectConfig, timesteps: list[float]) -> tuple[dict[float, float], dict[float, int]]:
    """t bucket -> (sigma, step index) of the sampling step whose t is nearest (the family's rule)."""
    import comfy.samplers
    from ...host.block_patch import StepClock
    ks = comfy.samplers.KSampler(model, steps=cfg.steps, device=model.load_device, sampler=cfg.sampler,
                                 scheduler=cfg.scheduler, denoise=1.0, model_options=model.model_options)
    sig = [float(s) for s in ks.sigmas[:-1]]
    ts = StepClock(model).step_ts(ks.sigmas)
    idx = {t: min(range(len(sig)), key=lambda i: abs(ts[i] - t)) for t in timesteps}
    return {t: sig[i] for t, i in idx.items()}, idx


def encode(clip, text: str):
    return clip.encode_from_tokens_scheduled(clip.tokenize(text))


def batch_conditioning(conds: list) -> list:
    """Stack single-prompt conditionings [[tensor [1, 77, 768], {pooled_output}]] into one batch."""
    tensors = torch.cat([c[0][0] for c in conds])
    extra = dict(conds[0][0][1])
    if extra.get("pooled_output") is not None:
        extra["pooled_output"] = torch.cat([c[0][1]["pooled_output"] for c in conds])
    return [[tensors, extra]]


def run_config(cfg: CollectConfig, n_prompts: int, family: str) -> dict:
    d = asdict(cfg)
    for k in ("out", "limit", "save_images", "batch_size"):
        d.pop(k)
    d["checkpoint"] = Path(cfg.checkpoint).name if cfg.checkpoint else "<in-process model>"
    d["diffusion_model"] = Path(cfg.diffusion_model).name if cfg.diffusion_model else ""
    d["text_encoders"] = ",".join(Path(t.strip()).name for t in cfg.text_encoders.split(",") if t.strip())
    d["vae"] = Path(cfg.vae).name if cfg.vae else ""
    d["prompts"] = hashlib.sha256(Path(cfg.prompts).read_bytes()).hexdigest()[:16] if cfg.prompts else ""
    if cfg.weight_dtype == "default":
        d.pop("weight_dtype")   # as before the option existed, so earlier collections still resume
    d["n_prompts"] = n_prompts
    d["model_family"] = family
    return d


def parse_timesteps(text: str) -> list[float]:
    try:
        timesteps = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        timesteps = []
    if not timesteps or any(not 0.0 <= t <= 1.0 for t in timesteps):
        raise CollectError(f"--timesteps must be comma-separated numbers in [0, 1] (1.0 = first step), got {text!r}")
    return timesteps


def check_collect_config(cfg: CollectConfig) -> None:
    """Values that make no sense are refused before the model is loaded, naming the option."""
    for name in ("steps", "width", "height", "batch_size", "prompts_per_shard"):
        require(getattr(cfg, name) > 0, f"--{name.replace('_', '-')} must be positive, got {getattr(cfg, name)}")
    for name in ("positions", "limit", "seed"):
        require(getattr(cfg, name) >= 0, f"--{name} must be >= 0, got {getattr(cfg, name)}")
    require(finite("--cfg", cfg.cfg) > 0, f"--cfg must be positive (1 = no guidance), got {cfg.cfg}")
    finite("--guidance", cfg.guidance)
    require(cfg.width % 8 == 0 and cfg.height % 8 == 0,
            f"--width and --height must be multiples of 8, got {cfg.width}x{cfg.height}")
    parse_timesteps(cfg.timesteps)
    from ...host.loaders import WEIGHT_DTYPES
    require(cfg.weight_dtype in WEIGHT_DTYPES,
            f"--weight-dtype must be one of {', '.join(WEIGHT_DTYPES)}, got {cfg.weight_dtype!r}")
    require(cfg.quantity in ("delta", "output"), f"--quantity must be delta or output, got {cfg.quantity!r}")
    require(bool(cfg.checkpoint) != bool(cfg.diffusion_model) or not (cfg.checkpoint or cfg.diffusion_model),
            "give either --checkpoint or --diffusion-model (with --text-encoders), not both")
    require(not (cfg.text_encoders or cfg.vae) or bool(cfg.diffusion_model),
            "--text-encoders and --vae go with --diffusion-model (a --checkpoint file holds its own)")


def check_sampler_names(sampler: str, scheduler: str, options=("--sampler", "--scheduler")) -> None:
    """ComfyUI falls back to a default for a name it does not know; a run must not record one it did not use."""
    import comfy.samplers
    for name, value, known in ((options[0], sampler, comfy.samplers.KSampler.SAMPLERS),
                               (options[1], scheduler, comfy.samplers.KSampler.SCHEDULERS)):
        require(value in known, f"{name} {value!r} is not one of ComfyUI's: {', '.join(known)}")


def collect(cfg: CollectConfig, model=None, clip=None, vae=None, prompts: list[str] | None = None,
            rank: int = 0, world: int = 1, progress: bool = True) -> Path:
    """Record Delta for every prompt into cfg.out (resumable). A run that fails before writing
    anything leaves no empty --out folder behind (a bad checkpoint path, say)."""
    fresh = not Path(cfg.out).exists()
    try:
        return _collect(cfg, model, clip, vae, prompts, rank, world, progress)
    except BaseException:
        if fresh:
            with contextlib.suppress(OSError):   # only an empty folder; another rank may be writing
                Path(cfg.out).rmdir()
        raise


def _collect(cfg: CollectConfig, model, clip, vae, prompts: list[str] | None, rank: int, world: int,
             progress: bool) -> Path:
    check_collect_config(cfg)
    check_writable(cfg.out, "--out")   # before loading a model and sampling, not after
    check_sampler_names(cfg.sampler, cfg.scheduler)
    import comfy.sample
    from ...host.block_patch import TimestepRecorder, patch_block
    from ...host.loaders import check_family
    from ...host.model_blocks import diffusers_to_comfy, resolve_block, transformer_blocks

    prompts = prompts if prompts is not None else read_prompts(cfg.prompts)
    if cfg.limit:
        prompts = prompts[: cfg.limit]
    if model is None:
        model, clip, vae = load_models(cfg)
    family = check_family(model, cfg.checkpoint or cfg.diffusion_model or "the model")
    names = [b for b in cfg.blocks.split(",") if b.strip()] or list(family.default_blocks)
    try:
        blocks = [resolve_block(model, b) for b in names]
    except ValueError as e:
        raise CollectError(str(e)) from None
    channels = {b: transformer_blocks(model)[b] for b in blocks}
    diffusers = {c: d for d, c in diffusers_to_comfy(model).items() if c in blocks}
    timesteps = parse_timesteps(cfg.timesteps)
    out = Path(cfg.out)
    writer = ShardWriter(out, rank, run_config=run_config(cfg, len(prompts), family.name))
    for bad in writer.repaired:
        print(f"collect: shard {bad} is listed but not intact; collecting it again")
    targets, step_index = bucket_sigmas(model, cfg, timesteps)
    recorders = {b: TimestepRecorder(targets, torch.float16) for b in blocks}
    patched = model
    for b in blocks:
        patched = patch_block(patched, b, recorders[b], quantity=cfg.quantity)
    negative = encode(clip, cfg.negative_prompt)
    mine = list(range(rank, len(prompts), world))
    chunks = [mine[i:i + cfg.prompts_per_shard] for i in range(0, len(mine), cfg.prompts_per_shard)]
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(mine), desc=f"collect (rank {rank})", unit="prompt",
                   initial=sum(len(c) for i, c in enumerate(chunks) if i in writer.done))
    lh, lw = cfg.height // 8, cfg.width // 8
    channels_latent = model.get_model_object("latent_format").latent_channels
    for shard_index, chunk in enumerate(chunks):
        if shard_index in writer.done:
            continue
        parts: dict[str, list] = defaultdict(list)
        grids = {}
        for start in range(0, len(chunk), cfg.batch_size):
            ids = chunk[start:start + cfg.batch_size]
            noise = torch.cat([torch.randn(1, channels_latent, lh, lw, generator=torch.Generator().manual_seed(cfg.seed + i))
                               for i in ids])
            positive = batch_conditioning([encode(clip, prompts[i]) for i in ids])
            neg = batch_conditioning([negative] * len(ids))
            if family.name == "flux":   # what FluxGuidance sets (Flux-dev's guidance embedding)
                positive[0][1]["guidance"] = neg[0][1]["guidance"] = cfg.guidance
            for r in recorders.values():
                r.reset()
            latent = comfy.sample.sample(patched, noise, cfg.steps, cfg.cfg, cfg.sampler, cfg.scheduler, positive,
                                         neg, torch.zeros_like(noise), disable_pbar=True, seed=cfg.seed + ids[0])
            missing = [f"{b}@t={t:g}" for b, rec in recorders.items() for t in timesteps
                       if not any(seen_t == t for seen_t, _ in rec.seen)]
            if missing:
                raise CollectError(f"no activations were recorded for {missing}: the sampler never evaluated "
                                   f"those steps (sampler {cfg.sampler}, scheduler {cfg.scheduler})")
            for b, rec in recorders.items():
                for (t, kind), delta in rec.seen.items():
                    _, C, H, W = delta.shape
                    grids[b] = [H, W]
                    key = activation_key(b, t, kind)
                    for j, pid in enumerate(ids):
                        rows = delta[j].reshape(C, H * W).t()
                        pos = torch.arange(H * W, dtype=torch.int32)
                        if cfg.positions and cfg.positions < H * W:
                            g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + pid)
                            pos = torch.randperm(H * W, generator=g)[: cfg.positions].sort().values.int()
                            rows = rows[pos.long()]
                        parts[f"{key}/acts"].append(rows)
                        parts[f"{key}/prompt"].append(torch.full((rows.shape[0],), pid, dtype=torch.int64))
                        parts[f"{key}/pos"].append(pos)
            if cfg.save_images and vae is not None:
                images = vae.decode(latent).clamp(0, 1)
                for j, pid in enumerate(ids):
                    save_png(out / "images" / f"{pid:06d}.png", images[j])
            if bar is not None:
                bar.update(len(ids))
        tensors = {k: torch.cat(v) for k, v in parts.items()}
        writer.write(shard_index, tensors, {
            "prompt_ids": chunk, "prompts": [prompts[i] for i in chunk], "seeds": [cfg.seed + i for i in chunk],
            "grids": grids, "channels": channels, "blocks_diffusers": diffusers,
            "step_index": {f"{t:g}": i for t, i in step_index.items()}})
        left = sum(1 for i in range(shard_index + 1, len(chunks)) if i not in writer.done)
        if left:   # a full disk is found after one shard, from the shards' real size, not at the end
            check_writable(out, "--out", need_bytes=left * max(s["bytes"] for s in writer.manifest["shards"]))
    if bar is not None:
        bar.close()
    return out


def save_png(path: Path, image: torch.Tensor) -> None:
    """image [H, W, 3] in [0, 1] -> PNG, atomically."""
    from PIL import Image
    arr = (image.detach().float().cpu().numpy() * 255).round().astype("uint8")
    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")


def distributed_from_env() -> tuple[int, int]:
    """(rank, world) under torchrun; initialises the process group (gloo on CPU, nccl on GPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def write_prompt_index(out: Path) -> None:
    """prompts.jsonl beside the shards: id, prompt, seed, image (for the dictionary stage)."""
    from ..storage.shards import ShardSet
    rows = []
    for s in ShardSet.open(out).shards:
        for pid, p, seed in zip(s["prompt_ids"], s["prompts"], s["seeds"]):
            rows.append({"id": pid, "prompt": p, "seed": seed, "image": f"images/{pid:06d}.png"})
    rows.sort(key=lambda r: r["id"])
    from ...sae_core.atomic import write_text_atomic
    write_text_atomic(out / "prompts.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
