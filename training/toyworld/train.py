"""Train the Toy World model: ε-prediction on SD1.x's scaled-linear schedule, from scratch.

Deterministic: batch `step` is drawn from rng([seed, step]) (scenes) and a torch generator
seeded from (seed, step) (timesteps, noise, prompt dropout), so a resumed run sees exactly the
batches an unbroken one would. Checkpoints (model, text encoder, EMA, AdamW state, step) are
single safetensors files written atomically; `train` resumes from the newest one.

Batches are always drawn on the CPU (by `workers` processes ahead of the step, or in the loop),
so every device and worker count trains on the same scenes and noise; `device` (cuda on a GPU
box) runs the network. Bit-for-bit reproducibility holds on the CPU at a given thread count;
a GPU run is not bit-reproducible (cuDNN's algorithm choice, TF32, non-deterministic backward
kernels), only statistically the same recipe. A run may move between devices on resume.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ...sae_core.atomic import atomic_path, check_replaceable
from ...sae_core.errors import ConfigError
from ...sae_core.native_format import read_safetensors
from ..dataclass_cli import saved_setting
from ...host.toyworld.sampling import FORMAT as WEIGHTS_FORMAT
from ...host.toyworld.model import INITS, ToyModelConfig, ToyTextEncoder, build_unet, image_to_latent
from ...host.toyworld.world import PAD, TOKEN_ID, Scene, free_object, misbound, render, sample_scene, tokenize

CHECKPOINT = "checkpoint.safetensors"


@dataclass
class ToyTrainConfig:
    out: str = field(default="toyworld_run", metadata={"help": "run folder (checkpoint, log, weights); resumes if it exists"})
    steps: int = field(default=2000, metadata={"help": "optimizer steps in the whole run"})
    batch_size: int = field(default=16, metadata={"help": "scenes per step"})
    lr: float = field(default=5e-4, metadata={"help": "peak AdamW learning rate"})
    warmup: int = field(default=100, metadata={"help": "linear warm-up steps; then cosine decay to lr_floor*lr"})
    lr_floor: float = field(default=0.1, metadata={"help": "final lr as a fraction of the peak"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    ema_decay: float = field(default=0.995, metadata={"help": "EMA of the weights (the exported model)"})
    min_snr_gamma: float = field(default=5.0, metadata={"help": "min-SNR loss weighting γ (0: plain MSE)"})
    prompt_dropout: float = field(default=0.1, metadata={"help": "fraction of empty prompts (for CFG)"})
    omit_style: float = field(default=0.1, metadata={"help": "fraction of prompts that leave the style unnamed"})
    two_object_share: float = field(default=0.5, metadata={
        "help": "share of training scenes with two objects (0..1). 0.5 = the world's own balanced draw (v3's "
                "recipe; v5's fine-tunes used 0.75); more trains harder on the two-object prompts that fail most. "
                "Evaluation stays balanced"})
    offset_noise: float = field(default=0.1, metadata={"help": "std of a per-channel constant added to the noise (teaches that a noise offset is not image colour); may change on resume"})
    latent_scale: float = field(default=ToyModelConfig.latent_scale, metadata={
        "help": "the model works on (latent - 0.36) x this (recorded in the weights, so every loader follows it). "
                "2.5 = unit variance, as SD's 0.18215 (the shipped recipe); smaller shifts SD1.x's schedule towards "
                "noise (at 2.5 a training input at t = 999 still shows where the objects are). May differ from "
                "--init-from's weights. 1.0 was tried and did not help (MODEL_CARD.md)"})
    grad_clip: float = field(default=1.0, metadata={"help": "gradient norm clip"})
    skip_dropout: float = field(default=0.0, metadata={
        "help": "chance per scene of zeroing the U-Net's skip connections above latent/4 (24x24 and 12x12 on the "
                "toy) in training, so the image must pass through the paper's 6x6 / 3x3 blocks; 0 = off (the "
                "shipped recipe). Inference is unchanged"})
    skip_dropout_loss: str = field(default="full", metadata={
        "help": "what a skip-dropped scene is scored on: full (every pixel of ε: the low path must also "
                "redraw the fine noise it never sees, which it cannot) or coarse (ε's error averaged over "
                "the cells of the finest kept skip, latent/4, 4x4 pixels of the toy's latent: only what the "
                "low path can know, the coarse layout); kept scenes are always scored on every pixel. "
                "coarse needs --skip-dropout > 0. Tried on v5, not shipped (MODEL_CARD.md)"})
    stray_objects: float = field(default=0.0, metadata={
        "help": "chance per prompted scene of a stray object (not in the prompt) faded into the noisy input at "
                "t >= 500 while the target stays the scene without it, so the model learns to fade out blobs the "
                "prompt does not ask for (how copies and third objects start in sampling); 0 = off (v3's recipe; "
                "v5's last two stages used 0.5)"})
    misbound_objects: float = field(default=0.0, metadata={
        "help": "chance per prompted scene of its objects drawn with a binding error (colours swapped, one "
                "object given the other's colour or shape; one object: a wrong colour or shape; an error that "
                "changes nothing the prompt says is skipped) faded into the noisy input at t >= 500 while the "
                "target stays the scene as asked, so the model learns to correct a wrongly bound object towards "
                "the prompt; 0 = off (v3's recipe; v5's last stage used 0.5)"})
    init: str = field(default="torch", metadata={
        "help": "U-Net weight init: torch (PyTorch's default; the shipped recipe) or unit (size-preserving "
                "convolutions and linears, so the low-resolution path reaches the output from the start; "
                "see host/toyworld/model.build_unet)"})
    init_from: str = field(default="", metadata={
        "help": "start from an exported Toy World weights file (e.g. the shipped toyworld_v5.safetensors: its "
                "EMA weights, fp16 -> fp32) instead of a fresh init: a fine-tune with a new AdamW, warm-up and "
                "schedule; the file's SHA-256 is recorded, and a resume checks it. Use a --seed other than the "
                "weights' own, or the fine-tune sees their first batches again"})
    seed: int = field(default=0, metadata={"help": "seed of init, scenes and noise"})
    threads: int = field(default=1, metadata={"help": "torch CPU threads (recorded; results depend on it)"})
    checkpoint_every: int = field(default=100, metadata={"help": "steps between checkpoints"})
    device: str = field(default="cpu", metadata={
        "help": "torch device that runs the network: cpu, or cuda / cuda:N on a GPU box (batches are drawn on the "
                "CPU either way, so the scenes and noise are the same; may change on resume)"})
    workers: int = field(default=0, metadata={
        "help": "processes drawing batches ahead of the training step (0: drawn in the loop); the batches are "
                "the same at any number (on the CPU, so is the result, bit for bit). For a GPU, whose step may "
                "be shorter than drawing a batch of scenes in Python"})


def sd1_alphas_cumprod() -> torch.Tensor:
    """SD1.x's training schedule (scaled-linear betas 0.00085..0.012, 1000 steps), from the same
    function ComfyUI's ModelSamplingDiscrete builds its sigmas with, so KSampler matches it."""
    from comfy.ldm.modules.diffusionmodules.util import make_beta_schedule
    betas = torch.as_tensor(make_beta_schedule("linear", 1000, linear_start=0.00085, linear_end=0.012))
    return torch.cumprod(1.0 - betas, dim=0).float()


def make_batch(cfg: ToyTrainConfig, step: int, batch_size: int | None = None,
               model_cfg: ToyModelConfig | None = None, scenes: list | None = None):
    """(model-space latents x0 [B,12,24,24], token ids [B,L]) of training batch `step`
    (deterministic); model space = (latent - shift) * scale, ComfyUI's process_in.
    `scenes`, if given, receives the batch's Scene objects."""
    m = model_cfg or ToyModelConfig()
    rng = np.random.default_rng([cfg.seed, step])
    images, ids = [], []
    scenes = [] if scenes is None else scenes
    for _ in range(batch_size or cfg.batch_size):
        # At 0.5 the world draws the count itself, so runs recorded before this setting draw as they did.
        n_objects = None if cfg.two_object_share == 0.5 else 1 + int(rng.random() < cfg.two_object_share)
        scene = sample_scene(rng, n_objects=n_objects, name_style_p=1.0 - cfg.omit_style)
        images.append(render(scene).image)
        ids.append(tokenize("" if rng.random() < cfg.prompt_dropout else scene.prompt))
        scenes.append(scene)
    x0 = m.to_model_space(image_to_latent(torch.from_numpy(np.stack(images))))
    return x0, torch.tensor(ids, dtype=torch.long)


STRAY_MIN_T = 500                 # strays only while the layout is still being decided (t >= 500)
# A stray's strength, as a share of a drawn object's (the asked ones: 1); for a misbound scene, the
# weight of the wrong drawing in the blend of the two.
STRAY_AMPLITUDE = (0.15, 0.7)


def faded_edits(share: float, stream: int, propose, cfg: ToyTrainConfig, step: int, scenes, x0: torch.Tensor,
                ids: torch.Tensor, t: torch.Tensor, model_cfg: ToyModelConfig) -> torch.Tensor | None:
    """[B,12,24,24] model-space difference a x (proposed scene - scene) for the scenes that get an
    edit at step `step` (0 elsewhere), or None if none does. `propose(rng, scene)` gives the objects
    to draw instead, or None for no edit. Prompted scenes at t >= STRAY_MIN_T only (an empty prompt
    asks for nothing, so nothing in it is wrong). Drawn from the stream [seed, step, stream] (0 is
    make_batch's, [seed, step]), each scene's draws taken whether it is edited or not, so neither
    the batch nor another kind of edit changes with this one."""
    rng = np.random.default_rng([cfg.seed, step, stream])
    pad = TOKEN_ID[PAD]
    out = torch.zeros(len(scenes), model_cfg.latent_channels, model_cfg.latent_size, model_cfg.latent_size)
    any_edit = False
    for i, scene in enumerate(scenes):
        chosen = rng.random() < share
        amplitude = rng.uniform(*STRAY_AMPLITUDE)
        objects = propose(rng, scene)
        if not chosen or objects is None or int(t[i]) < STRAY_MIN_T or bool((ids[i] == pad).all()):
            continue
        edited = render(Scene(objects, scene.style, scene.name_style)).image
        x_edited = model_cfg.to_model_space(image_to_latent(torch.from_numpy(edited[None])))[0]
        out[i] = amplitude * (x_edited - x0[i])    # x0[i]: the scene as make_batch rendered it
        any_edit = True
    return out if any_edit else None


def stray_objects(cfg: ToyTrainConfig, step: int, scenes, x0, ids, t, model_cfg: ToyModelConfig):
    """faded_edits of strays (stream 1): one more object, any colour and shape (a copy of an asked
    object, too), at a free position."""
    def with_stray(rng, scene):
        stray = free_object(rng, scene.objects)
        return None if stray is None else scene.objects + (stray,)
    return faded_edits(cfg.stray_objects, 1, with_stray, cfg, step, scenes, x0, ids, t, model_cfg)


def misbound_objects(cfg: ToyTrainConfig, step: int, scenes, x0, ids, t, model_cfg: ToyModelConfig):
    """faded_edits of misbound objects (stream 2): the asked objects drawn with a binding error
    (world.misbound); none where the error would change nothing the prompt says."""
    def misbound_scene(rng, scene):
        wrong = misbound(rng, scene.objects)
        return None if wrong == scene.objects else wrong
    return faded_edits(cfg.misbound_objects, 2, misbound_scene, cfg, step, scenes, x0, ids, t, model_cfg)


def noised(x0: torch.Tensor, noise: torch.Tensor, ab: torch.Tensor, edit: torch.Tensor | None = None):
    """(x_t, ε target) at ᾱ = ab. An input-only edit (stray objects, misbound objects) is in the input
    but not in the target's scene: the target is the noise that leads from x_t back to x0 without it,
    so predicting it undoes the edit."""
    xt = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    if edit is None:
        return xt, noise
    return xt + ab.sqrt() * edit, noise + (ab / (1 - ab)).sqrt() * edit


def draw_step(cfg: ToyTrainConfig, step: int, n_timesteps: int, model_cfg: ToyModelConfig | None = None):
    """Everything random about training step `step`, drawn on the CPU: (x0, token ids, timesteps,
    noise, skip-dropout mask or None, input-only edits (strays, misbound objects) or None).
    A function of (seed, step) alone."""
    model_cfg = model_cfg or ToyModelConfig()
    scenes = []
    x0, ids = make_batch(cfg, step, model_cfg=model_cfg, scenes=scenes)
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
    t = torch.randint(0, n_timesteps, (x0.shape[0],), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    if cfg.offset_noise > 0:   # drawn last, so runs without it draw exactly as before
        noise = noise + cfg.offset_noise * torch.randn(x0.shape[0], x0.shape[1], 1, 1, generator=g)
    dropped = None
    if cfg.skip_dropout > 0:   # drawn last, so runs without it draw exactly as before
        dropped = torch.rand(x0.shape[0], generator=g) < cfg.skip_dropout
    edits = []   # input-only edits add up: each is a difference from the same x0
    if cfg.stray_objects > 0:
        edits.append(stray_objects(cfg, step, scenes, x0, ids, t, model_cfg))
    if cfg.misbound_objects > 0:
        edits.append(misbound_objects(cfg, step, scenes, x0, ids, t, model_cfg))
    edits = [e for e in edits if e is not None]
    edit = sum(edits[1:], edits[0]) if edits else None
    return x0, ids, t, noise, dropped, edit


class _Steps(torch.utils.data.Dataset):
    """Training steps [first, last) as a dataset of whole batches, for DataLoader workers."""

    def __init__(self, cfg: ToyTrainConfig, first: int, last: int, n_timesteps: int, model_cfg: ToyModelConfig):
        self.cfg, self.first, self.last, self.n_timesteps, self.model_cfg = cfg, first, last, n_timesteps, model_cfg

    def __len__(self):
        return max(0, self.last - self.first)

    def __getitem__(self, i):
        return draw_step(self.cfg, self.first + i, self.n_timesteps, self.model_cfg)


def step_batches(cfg: ToyTrainConfig, first: int, last: int, n_timesteps: int, model_cfg: ToyModelConfig):
    """The random draws of steps first..last-1 in order, from `cfg.workers` processes or inline."""
    if cfg.workers <= 0:
        for step in range(first, last):
            yield draw_step(cfg, step, n_timesteps, model_cfg)
        return
    # DataLoader yields in index order (workers take turns), so step i always gets batch i.
    # prefetch 2 per worker keeps the shared memory in flight small (a container's /dev/shm may be 64 MB).
    loader = torch.utils.data.DataLoader(_Steps(cfg, first, last, n_timesteps, model_cfg), batch_size=None,
                                         shuffle=False, num_workers=cfg.workers, prefetch_factor=2)
    yield from loader


def skip_dropout_patch(dropped: torch.Tensor, keep_at_most: int):
    """ComfyUI output_block_patch: zero the skip connection (hsp) of the `dropped` scenes wherever
    it is larger than keep_at_most x keep_at_most (the low-resolution skips stay)."""
    def patch(h, hsp, transformer_options):
        if hsp.shape[-1] > keep_at_most:
            hsp = hsp * (~dropped).to(hsp.dtype).view(-1, 1, 1, 1)
        return h, hsp
    return patch


SKIP_DROPOUT_LOSSES = ("full", "coarse")


def coarse_error(error: torch.Tensor, grid: int) -> torch.Tensor:
    """Per-scene mean square of `error` averaged over grid x grid cells, times the cell's pixel count,
    so an error of white noise (what no network can predict) scores as on the full grid."""
    k = error.shape[-1] // grid
    return torch.nn.functional.avg_pool2d(error, k).square().mean(dim=(1, 2, 3)) * (k * k)


def training_device(name: str) -> torch.device:
    """torch.device(name), or a ConfigError saying why it cannot train here."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name!r}: not a torch device (cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available here (torch {torch.__version__}"
                          f"{', a CPU build' if torch.version.cuda is None else ''}); use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {name}: only cpu and cuda are supported")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                          f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return device


class ToyTrainer:
    def __init__(self, cfg: ToyTrainConfig, model_cfg: ToyModelConfig | None = None):
        self.cfg = cfg
        if model_cfg is not None and model_cfg.latent_scale != cfg.latent_scale:
            raise ConfigError(f"model config latent_scale {model_cfg.latent_scale} differs from the training config's "
                              f"{cfg.latent_scale}; the run's scale is --latent-scale")
        self.model_cfg = replace(model_cfg or ToyModelConfig(), latent_scale=cfg.latent_scale)
        torch.manual_seed(cfg.seed)
        self.device = training_device(cfg.device)
        if self.device.type == "cuda" and self.device.index is not None:
            torch.cuda.set_device(self.device)   # so nothing else (ComfyUI, the CUDA context) lands on cuda:0
        self.unet = build_unet(self.model_cfg, init=cfg.init)
        self.text = ToyTextEncoder(self.model_cfg)
        # Built (and initialised) on the CPU, then moved: the initial weights are the same everywhere.
        self.modules = torch.nn.ModuleDict({"diffusion_model": self.unet, "text_encoder": self.text})
        self.init_sha256 = self._load_init(cfg.init_from) if cfg.init_from else ""
        self.modules.to(self.device)
        self.ema = {k: v.detach().clone() for k, v in self.modules.state_dict().items()}
        self.opt = torch.optim.AdamW(self.modules.parameters(), lr=cfg.lr, betas=(0.9, 0.99),
                                     weight_decay=cfg.weight_decay)
        self.alphas_cumprod = sd1_alphas_cumprod().to(self.device)
        self.step = 0
        self.seconds = 0.0       # training wall time summed over all sessions of this run
        self.schedule = [[0, cfg.steps]]   # [from step, schedule length] for each extension

    def _load_init(self, path: str) -> str:
        """Load exported weights (fp16 -> fp32) as the starting point; returns their SHA-256."""
        from ...host.toyworld.sampling import read_toy_weights, weights_digest
        model_cfg, tensors, _ = read_toy_weights(path)
        # The input scale is not in the weights' shapes: a fine-tune may change it (--latent-scale).
        if replace(model_cfg, latent_scale=self.model_cfg.latent_scale) != self.model_cfg:
            raise ConfigError(f"--init-from {path}: its model config {model_cfg} differs from the one trained "
                              f"here, {self.model_cfg}")
        try:   # strict: names every missing, unexpected or misshapen tensor; copies fp16 into fp32
            self.modules.load_state_dict(tensors, strict=True)
        except RuntimeError as e:
            raise ConfigError(f"--init-from {path}: {e}") from None
        return weights_digest(path)

    def lr_at(self, step: int) -> float:
        c = self.cfg
        if step < c.warmup:
            return c.lr * (step + 1) / c.warmup
        p = (step - c.warmup) / max(1, c.steps - c.warmup)
        return c.lr * (c.lr_floor + (1 - c.lr_floor) * 0.5 * (1 + math.cos(math.pi * min(p, 1.0))))

    def loss_on(self, step: int, drawn=None) -> torch.Tensor:
        """The loss of training step `step`; `drawn` = draw_step(...) of that step, if drawn ahead."""
        if drawn is None:
            drawn = draw_step(self.cfg, step, len(self.alphas_cumprod), self.model_cfg)
        x0, ids, t, noise, dropped, edit = (None if v is None else v.to(self.device) for v in drawn)
        options = {}
        if dropped is not None:
            options = {"patches": {"output_block_patch": [skip_dropout_patch(dropped, x0.shape[-1] // 4)]}}
        ab = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        xt, target = noised(x0, noise, ab, edit)
        eps = self.unet(xt, t.float(), context=self.text(ids), transformer_options=options)
        per_sample = (eps - target).square().mean(dim=(1, 2, 3))
        if dropped is not None and self.cfg.skip_dropout_loss == "coarse":
            per_sample = torch.where(dropped, coarse_error(eps - target, x0.shape[-1] // 4), per_sample)
        if self.cfg.min_snr_gamma > 0:
            snr = (ab / (1 - ab)).view(-1)
            per_sample = per_sample * snr.clamp(max=self.cfg.min_snr_gamma) / snr
        return per_sample.mean()

    def train_step(self, drawn=None) -> float:
        for group in self.opt.param_groups:
            group["lr"] = self.lr_at(self.step)
        self.modules.train()
        loss = self.loss_on(self.step, drawn)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.modules.parameters(), self.cfg.grad_clip)
        self.opt.step()
        with torch.no_grad():
            d = min(self.cfg.ema_decay, (1 + self.step) / (10 + self.step))
            live = self.modules.state_dict()
            floats = [k for k, v in live.items() if v.is_floating_point()]
            # All tensors at once (one kernel per op on a GPU, not ~700); the same arithmetic.
            torch._foreach_mul_([self.ema[k] for k in floats], d)
            torch._foreach_add_([self.ema[k] for k in floats], [live[k] for k in floats], alpha=1 - d)
            for k, v in live.items():
                if not v.is_floating_point():
                    self.ema[k].copy_(v)
        self.step += 1
        return float(loss.detach())

    # -- checkpoints ---------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        out = {f"model.{k}": v.contiguous() for k, v in self.modules.state_dict().items()}
        out.update({f"ema.{k}": v.contiguous() for k, v in self.ema.items()})
        for i, st in self.opt.state_dict()["state"].items():
            for name, v in st.items():
                out[f"opt.{i}.{name}"] = torch.as_tensor(v).contiguous()
        return {k: v.cpu() for k, v in out.items()}

    def save_checkpoint(self, path: Path):
        meta = {"step": str(self.step), "seconds": f"{self.seconds:.1f}", "schedule": json.dumps(self.schedule),
                "train_config": json.dumps(asdict(self.cfg)), "model_config": self.model_cfg.to_json()}
        if self.init_sha256:
            meta["init_from_sha256"] = self.init_sha256
        with atomic_path(path) as tmp:
            save_file(self.state_tensors(), str(tmp), metadata=meta)

    def load_checkpoint(self, path: Path):
        from safetensors import safe_open
        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
        saved_model_cfg = ToyModelConfig.from_json(meta["model_config"])
        if saved_model_cfg != self.model_cfg:
            raise ConfigError(f"{path}: checkpoint model config {saved_model_cfg} differs from {self.model_cfg}")
        saved = json.loads(meta["train_config"])
        # The schedule's length may be extended on resume (recorded in the checkpoint's
        # "schedule" history, so the recipe stays exact); every other setting must match.
        # A setting a run's checkpoint predates (skip_dropout, init, stray_objects, ...) ran at its default.
        for key in ("seed", "batch_size", "lr", "warmup", "lr_floor", "min_snr_gamma", "prompt_dropout",
                    "omit_style", "two_object_share", "ema_decay", "weight_decay", "grad_clip", "skip_dropout", "skip_dropout_loss", "init",
                    "stray_objects", "misbound_objects"):
            started = saved_setting(saved, ToyTrainConfig, key)
            if started != getattr(self.cfg, key):
                raise ConfigError(f"{path}: resuming with {key}={getattr(self.cfg, key)} but the run "
                                 f"was started with {key}={started}; use the same settings or a new --out")
        if meta.get("init_from_sha256", "") != self.init_sha256:
            raise ConfigError(f"{path}: the run started from weights with SHA-256 "
                              f"{meta.get('init_from_sha256') or '(none: a fresh init)'}, but --init-from gives "
                              f"{self.init_sha256 or '(none)'}; use the same file or a new --out")
        t = load_file(str(path))
        self.modules.load_state_dict({k[6:]: v for k, v in t.items() if k.startswith("model.")})
        self.ema = {k[4:]: v.to(self.device, copy=True) for k, v in t.items() if k.startswith("ema.")}
        opt_state = self.opt.state_dict()
        opt_state["state"] = {}
        for k, v in t.items():
            if k.startswith("opt."):
                _, i, name = k.split(".", 2)
                opt_state["state"].setdefault(int(i), {})[name] = v
        self.opt.load_state_dict(opt_state)   # moves the moments to their parameters' device
        self.step = int(meta["step"])
        self.seconds = float(meta["seconds"])
        self.schedule = json.loads(meta.get("schedule", json.dumps([[0, saved["steps"]]])))
        last = self.schedule[-1]
        last_offset = last[2] if len(last) > 2 else saved.get("offset_noise", 0.0)
        if self.cfg.steps != last[1] or self.cfg.offset_noise != last_offset:
            if self.cfg.steps < self.step:
                raise ConfigError(f"{path}: the run is at step {self.step}, past --steps {self.cfg.steps}")
            entry = [self.step, self.cfg.steps]
            if self.cfg.offset_noise:
                entry.append(self.cfg.offset_noise)   # [from step, schedule length, offset noise]
            self.schedule.append(entry)


def check_weights_out(out: Path, init_from: str = "") -> None:
    """The exported weights may replace an earlier export, never another kind of file, nor the
    weights a fine-tune starts from."""
    check_replaceable(out, "--weights", "safetensors", WEIGHTS_FORMAT, inputs={"--init-from": init_from})


def export_weights(ckpt: Path, out: Path, dtype=torch.float16) -> Path:
    """The shipped file: EMA weights of U-Net (diffusion_model.*) and text encoder
    (text_encoder.*) in fp16, with the model config, recipe and step as metadata."""
    check_weights_out(out)
    if not Path(ckpt).is_file():
        raise ConfigError(f"{ckpt}: no training checkpoint there (`sae-concepts toyworld train --out "
                          f"{Path(ckpt).parent}` writes it)")
    meta, t = read_safetensors(ckpt)   # a truncated or corrupt file: one clear error
    weights = {k[4:]: v.to(dtype).contiguous() for k, v in t.items() if k.startswith("ema.")}
    if not weights or "model_config" not in meta:
        raise ConfigError(f"{ckpt}: not a Toy World training checkpoint (expected ema.* tensors and a model_config "
                          f"in its metadata; found {len(t)} tensors, metadata keys {sorted(meta)[:6]})")
    with atomic_path(out) as tmp:
        save_file(weights, str(tmp), metadata={"format": WEIGHTS_FORMAT, **meta})
    return out


def check_train_config(cfg: ToyTrainConfig) -> None:
    """Every option in its range, before anything is written (a bad value would otherwise train
    for hours, or fail deep inside the optimizer)."""
    def finite(x):
        return isinstance(x, (int, float)) and math.isfinite(x)
    share = "in 0..1"
    checks = [("--steps", cfg.steps, cfg.steps >= 1, "1 or more"),
              ("--batch-size", cfg.batch_size, cfg.batch_size >= 1, "1 or more"),
              ("--lr", cfg.lr, finite(cfg.lr) and cfg.lr > 0, "a finite number > 0"),
              ("--warmup", cfg.warmup, cfg.warmup >= 0, "0 or more"),
              ("--lr-floor", cfg.lr_floor, finite(cfg.lr_floor) and 0 <= cfg.lr_floor <= 1, "a fraction in 0..1"),
              ("--weight-decay", cfg.weight_decay, finite(cfg.weight_decay) and cfg.weight_decay >= 0, "0 or more"),
              ("--ema-decay", cfg.ema_decay, finite(cfg.ema_decay) and 0 <= cfg.ema_decay < 1, "in 0..1 (1 excluded)"),
              ("--min-snr-gamma", cfg.min_snr_gamma, finite(cfg.min_snr_gamma) and cfg.min_snr_gamma >= 0, "0 (off) or more"),
              ("--offset-noise", cfg.offset_noise, finite(cfg.offset_noise) and cfg.offset_noise >= 0, "0 (off) or more"),
              ("--latent-scale", cfg.latent_scale, finite(cfg.latent_scale) and cfg.latent_scale > 0, "a finite number > 0"),
              ("--grad-clip", cfg.grad_clip, finite(cfg.grad_clip) and cfg.grad_clip > 0, "a finite number > 0"),
              ("--threads", cfg.threads, cfg.threads >= 1, "1 or more"),
              ("--checkpoint-every", cfg.checkpoint_every, cfg.checkpoint_every >= 1, "1 or more"),
              ("--workers", cfg.workers, cfg.workers >= 0, "0 (draw batches in the loop) or more"),
              ("--init", cfg.init, cfg.init in INITS, f"one of {', '.join(INITS)}"),
              ("--skip-dropout-loss", cfg.skip_dropout_loss, cfg.skip_dropout_loss in SKIP_DROPOUT_LOSSES,
               f"one of {', '.join(SKIP_DROPOUT_LOSSES)}")]
    checks += [(f"--{name.replace('_', '-')}", getattr(cfg, name), finite(getattr(cfg, name)) and 0 <= getattr(cfg, name) <= 1, share)
               for name in ("prompt_dropout", "omit_style", "two_object_share", "skip_dropout", "stray_objects",
                            "misbound_objects")]
    for option, value, ok, expected in checks:
        if not ok:
            raise ConfigError(f"{option} must be {expected}, got {value!r}")
    if cfg.skip_dropout_loss == "coarse" and cfg.skip_dropout <= 0:
        raise ConfigError("--skip-dropout-loss coarse scores skip-dropped scenes, but --skip-dropout is 0: "
                          "nothing is dropped; give --skip-dropout P (0 < P <= 1) or leave the loss at full")


def train(cfg: ToyTrainConfig, model_cfg: ToyModelConfig | None = None, progress: bool = True,
          stop_after: int | None = None, stop_at: int | None = None) -> ToyTrainer:
    """Run (or resume) training to cfg.steps. `stop_after` ends this session after that many more
    steps (tests); `stop_at` ends the run at that step (the lr schedule still spans cfg.steps)."""
    from tqdm import tqdm
    check_train_config(cfg)
    torch.set_num_threads(cfg.threads)
    trainer = ToyTrainer(cfg, model_cfg)   # checks the device and --init-from before anything is written
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / CHECKPOINT
    if ckpt.exists():
        trainer.load_checkpoint(ckpt)
    last = cfg.steps if stop_at is None else min(cfg.steps, stop_at)
    if stop_after is not None:
        last = min(last, trainer.step + stop_after)
    log = open(out / "train_log.jsonl", "a", encoding="utf-8")
    bar = tqdm(total=cfg.steps, initial=trainer.step, disable=not progress, desc="toyworld train")
    running = None
    batches = step_batches(cfg, trainer.step, last, len(trainer.alphas_cumprod), trainer.model_cfg)
    try:
        while trainer.step < last:
            t0 = time.perf_counter()
            loss = trainer.train_step(next(batches))
            trainer.seconds += time.perf_counter() - t0
            if not math.isfinite(loss):
                raise FloatingPointError(f"toyworld train: loss is {loss} at step {trainer.step}")
            running = loss if running is None else 0.98 * running + 0.02 * loss
            bar.update(1)
            bar.set_postfix(loss=f"{running:.4f}")
            if trainer.step % 25 == 0:
                log.write(json.dumps({"step": trainer.step, "loss": round(running, 5),
                                      "seconds": round(trainer.seconds, 1)}) + "\n")
                log.flush()
            if trainer.step % cfg.checkpoint_every == 0 or trainer.step == last:
                trainer.save_checkpoint(ckpt)
    finally:
        batches.close()   # stops the workers, if any
        bar.close()
        log.close()
    return trainer
