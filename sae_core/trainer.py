"""Train a TopK SAE from any iterator of [N, d] activation batches, resumably."""
from __future__ import annotations

import itertools
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import save_file

from .atomic import atomic_path, write_text_atomic
from .config import SaeConfig
from .cpu_threads import intra_op_threads, step_threads, thread_stable_sum
from .errors import SAEConceptsError
from .geometric_median import geometric_median
from .sae import TopKSAE


# The paper's settings (Tinaz et al., after Gao et al.): Adam 1e-4 at batch 4096, k_aux 256,
# alpha 1/32, n_f = 4d (TrainCommandConfig's defaults), a latent dead after 10M vectors.
PAPER_LR = 1e-4
PAPER_DEAD_AFTER = 10_000_000


@dataclass
class TrainConfig:
    lr: float = 0.0
    """Adam learning rate; 0 means automatic: 2e-4 / sqrt(n_f / 2^14) as in sparsify (7.2e-4
    at n_f = 1280, 3.6e-4 at the paper's 5120), or the paper's 1e-4 with `paper`."""
    seed: int = 0
    """Seeds the weight initialisation; with the same data order the run is reproducible."""
    k_aux: int = 256
    """Dead latents used by the AuxK loss per vector."""
    auxk_alpha: float = 1 / 32
    """Weight of the AuxK loss; 0 disables it."""
    dead_after: int = 0
    """A latent that has not fired for this many vectors counts as dead. 0 means automatic:
    a tenth of the run's vectors, at most 10M, when the run length is known (max_steps or the
    trainer's expected_steps), else 10M; with `paper`, 10M."""
    normalise_input: bool = True
    """Divide inputs by a scalar so that E||x||^2 = d (estimated from the first batch); for an
    SAE with `standardise`, each dimension by its std over the first batch."""
    init_sample: int = 4096
    """Vectors of the first batch used for the geometric-median pre-bias and the input scale."""
    max_steps: int = 0
    """Stop after this many batches; 0 means when the data ends."""
    log_every: int = 10
    """Steps per logged window (averaged figures in the log and on the progress bar)."""
    checkpoint_every: int = 100
    """Steps between checkpoints (also written at the end); 0 means only at the end."""
    paper: bool = False
    """The paper's exact settings: lr 1e-4 and dead after 10M vectors where lr/dead_after are
    left automatic (k_aux 256, alpha 1/32, batch 4096 and n_f = 4d are the defaults already)."""


def per_dimension_std(sample: torch.Tensor) -> torch.Tensor:
    """Each column's std over the sample rows, the same at any thread count (column sums in fixed
    row blocks). A column that barely varies gets the median std instead: dividing by ~0 would
    turn rounding noise into the loudest input the SAE sees."""
    n = sample.shape[0]
    mean = torch.stack([thread_stable_sum(col) for col in sample.t()]) / n
    var = torch.stack([thread_stable_sum(col) for col in (sample - mean).pow(2).t()]) / max(n - 1, 1)
    std = var.sqrt()
    floor = 1e-3 * std.median()
    return torch.where(std > floor, std, std.median().clamp_min(1e-12))


class TrainingError(SAEConceptsError, RuntimeError):
    pass


def _adam(params, lr: float) -> torch.optim.Adam:
    """Adam as one fused kernel per parameter where torch has it (CPU since torch 2.4): one pass
    over the 13M parameters of a paper-sized SAE instead of about ten."""
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, ValueError):   # an older torch or a device without the fused kernel
        return torch.optim.Adam(params, lr=lr)


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _while_every_rank_has_data(it, device):
    """Under torch.distributed, stop every rank as soon as one runs out of batches: ranks read
    different shards and may hold different numbers of batches, and a rank that stopped alone
    would leave the others waiting forever in the gradient all-reduce."""
    if _world() == 1:
        yield from it
        return
    while True:
        x = next(it, None)
        flag = torch.tensor([0 if x is None else 1], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        if int(flag) == 0:
            return
        yield x


class Trainer:
    """Adam + unit-norm decoder + AuxK. One batch from the iterator is one step.

    Data-parallel under torch.distributed (torchrun): each rank feeds its own batches,
    gradients are averaged, the dead-latent counters see every rank's firings, and rank 0
    writes the checkpoint; all ranks keep identical weights.

    Resuming: with `checkpoint` set, an existing checkpoint is loaded and the first
    `step` batches of the iterator are skipped, so the iterator must replay the same
    sequence (a seeded or file-backed source does). A killed run resumed this way ends
    with the same weights as an uninterrupted one.
    """

    def __init__(self, sae_cfg: SaeConfig, cfg: TrainConfig = TrainConfig(), *, checkpoint=None,
                 log_path=None, device="cpu", progress: bool = False, expected_steps: int | None = None):
        self.sae_cfg, self.cfg = sae_cfg, cfg
        self.device = torch.device(device)
        gen = torch.Generator().manual_seed(cfg.seed)
        self.sae = TopKSAE(sae_cfg)
        self.sae.reset_parameters(gen)
        self.sae.to(self.device)
        self.optimizer = _adam([p for p in self.sae.parameters() if p.requires_grad], self.lr)
        self.tokens_since_fired = torch.zeros(sae_cfg.n_latents, dtype=torch.int64, device=self.device)
        self.step = 0
        self.vectors_seen = 0
        self.initialised = False
        self.finished = False
        self.history: list[dict] = []
        self.checkpoint = Path(checkpoint) if checkpoint else None
        self.log_path = Path(log_path) if log_path else None
        self.progress = progress
        self.expected_steps = expected_steps   # for the progress bar's ETA when the data length is known
        self._batch_vectors = 0                # vectors per step, from the first batch
        if self.checkpoint and self.checkpoint.exists():
            self._load_checkpoint(self.checkpoint)

    # ---- the step ----------------------------------------------------------------
    @torch.no_grad()
    def _initialise(self, x: torch.Tensor) -> None:
        sample = x[: self.cfg.init_sample].float()
        if self.cfg.normalise_input and self.sae_cfg.standardise:
            self.sae.input_scale.copy_(per_dimension_std(sample).to(self.device))
        elif self.cfg.normalise_input:
            scale = thread_stable_sum(sample.pow(2)).div(sample.shape[0] * self.sae_cfg.d_in).sqrt()
            self.sae.input_scale.fill_(float(scale) if scale > 0 else 1.0)
        self.sae.b_pre.copy_(geometric_median(sample / self.sae.input_scale.cpu().float()).to(self.device))
        if _world() > 1:  # every rank starts from rank 0's initialisation
            dist.broadcast(self.sae.b_pre.data, 0)
            dist.broadcast(self.sae.input_scale, 0)
        self.initialised = True

    def dead_mask(self) -> torch.Tensor:
        return self.tokens_since_fired >= self.dead_after

    @property
    def lr(self) -> float:
        """The learning rate in use (TrainConfig.lr, or the automatic one when that is 0)."""
        if self.cfg.lr:
            return self.cfg.lr
        return PAPER_LR if self.cfg.paper else 2e-4 / math.sqrt(self.sae_cfg.n_latents / 2**14)

    @property
    def dead_after(self) -> int:
        """Vectors without firing after which a latent counts as dead (TrainConfig.dead_after, or
        the automatic threshold when that is 0: AuxK must be able to start within the run)."""
        if self.cfg.dead_after:
            return self.cfg.dead_after
        steps = self.cfg.max_steps or self.expected_steps
        if self.cfg.paper or not steps or not self._batch_vectors:
            return PAPER_DEAD_AFTER
        return max(1, min(PAPER_DEAD_AFTER, steps * self._batch_vectors // 10))

    def train_step(self, x: torch.Tensor) -> dict:
        x = x.to(self.device, torch.float32)
        if not self._batch_vectors:   # sizes the automatic dead threshold
            self._batch_vectors = x.shape[0] * _world()
        if not self.initialised:
            self._initialise(x)
        use_aux = self.cfg.auxk_alpha > 0 and self.cfg.k_aux > 0
        dead = self.dead_mask()
        dead_ids = dead.nonzero().squeeze(1) if use_aux else None
        out = self.sae(x, dead_ids, self.cfg.k_aux if use_aux else 0)
        loss = out.fvu + self.cfg.auxk_alpha * out.auxk_loss
        if not torch.isfinite(loss):
            raise TrainingError(
                f"loss became {loss.item()} at step {self.step}: the batch or the weights hold NaN/Inf "
                f"(batch finite: {bool(torch.isfinite(x).all())})"
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        world = _world()
        if world > 1:
            for p in self.sae.parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= world
        self.sae.remove_parallel_decoder_grad()
        self.optimizer.step()
        self.sae.normalise_decoder()
        with torch.no_grad():
            fired = torch.zeros_like(dead)
            fired[out.code.indices[out.code.values > 0]] = True
            n = x.shape[0]
            if world > 1:
                fired_i = fired.to(torch.int32)
                dist.all_reduce(fired_i, op=dist.ReduceOp.MAX)
                fired = fired_i.bool()
                n_all = torch.tensor([n], device=self.device)
                dist.all_reduce(n_all)
                n = int(n_all)
            self.tokens_since_fired += n
            self.tokens_since_fired[fired] = 0
        self.step += 1
        self.vectors_seen += n
        return {
            "fvu": out.fvu.item(),
            "auxk_loss": out.auxk_loss.item(),
            "l0": (out.code.values > 0).sum(1).float().mean().item(),
            "dead_fraction": dead.float().mean().item(),
        }

    # ---- the loop ----------------------------------------------------------------
    def fit(self, batches: Iterable[torch.Tensor], on_log: Callable[[dict], None] | None = None) -> TopKSAE:
        if self.finished:  # resumed after the run had completed: nothing to replay
            return self.sae
        it = _while_every_rank_has_data(iter(batches), self.device)
        for _ in range(self.step):  # replay: skip what the checkpoint already consumed
            if next(it, None) is None:
                raise TrainingError(f"resuming at step {self.step}, but the data ended after fewer batches")
        bar = None
        if self.progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=self.cfg.max_steps or self.expected_steps, initial=self.step, desc="train SAE", unit="step")
        window: list[dict] = []
        # The first batch's size decides the CPU threads of every step (cpu_threads.py: small
        # steps on one thread, so a busy neighbour core cannot stall each op's barrier).
        first = next(it, None)
        it = itertools.chain([first] if first is not None else [], it)
        threads = step_threads(0 if first is None else first.shape[0], self.sae_cfg.d_in,
                               self.sae_cfg.n_latents, self.device)
        try:
            with intra_op_threads(threads):
                for x in it:
                    if self.cfg.max_steps and self.step >= self.cfg.max_steps:
                        break
                    window.append(self.train_step(x))
                    if bar is not None:
                        bar.update(1)
                    if self.step % self.cfg.log_every == 0:
                        entry = self._log(window)
                        window = []
                        if bar is not None:
                            bar.set_postfix(fvu=f"{entry['fvu']:.3f}", l0=f"{entry['l0']:.1f}",
                                            dead=f"{entry['dead_fraction']:.2f}")
                        if on_log:
                            on_log(entry)
                    if self.cfg.checkpoint_every and self.step % self.cfg.checkpoint_every == 0:
                        self.save_checkpoint()
        finally:
            if bar is not None:
                bar.close()
        if window:
            entry = self._log(window)
            if on_log:
                on_log(entry)
        self.finished = True
        self.save_checkpoint()
        return self.sae

    def _log(self, window: list[dict]) -> dict:
        entry = {"step": self.step, "vectors_seen": self.vectors_seen}
        for key in window[0]:
            entry[key] = sum(w[key] for w in window) / len(window)
        self.history.append(entry)
        return entry

    def summary(self) -> dict:
        """Training summary stored in the SAE file: figures of the last logged window."""
        last = self.history[-1] if self.history else {}
        return {
            "vectors_seen": self.vectors_seen,
            "steps": self.step,
            "fvu": last.get("fvu", math.nan),
            "l0": last.get("l0", math.nan),
            "dead_fraction": float(self.dead_mask().float().mean()),
            "lr": self.lr,
            "auxk_alpha": self.cfg.auxk_alpha,
        }

    # ---- checkpoints -------------------------------------------------------------
    def save_checkpoint(self, path=None) -> None:
        path = Path(path) if path else self.checkpoint
        if _rank() != 0:
            return
        if self.log_path:
            write_text_atomic(self.log_path, "".join(json.dumps(h) + "\n" for h in self.history))
        if path is None:
            return
        tensors = {f"sae.{k}": v.detach().contiguous().cpu() for k, v in self.sae.state_dict().items()}
        tensors["tokens_since_fired"] = self.tokens_since_fired.cpu()
        opt = self.optimizer.state_dict()
        for i, state in opt["state"].items():
            for name, value in state.items():
                tensors[f"adam.{i}.{name}"] = torch.as_tensor(value).cpu()
        meta = {
            "step": self.step, "vectors_seen": self.vectors_seen, "initialised": self.initialised,
            "finished": self.finished,
            "sae_cfg": self.sae_cfg.to_dict(), "train_cfg": asdict(self.cfg),
            "param_groups": opt["param_groups"], "history": self.history,
        }
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"sae_concepts_trainer": json.dumps(meta)})

    def _load_checkpoint(self, path: Path) -> None:
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = json.loads(f.metadata()["sae_concepts_trainer"])
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # noqa: BLE001 - any failure here means the file is unusable
            raise TrainingError(f"checkpoint {path} cannot be read ({type(e).__name__}: {e}); "
                                f"delete it to start over") from e
        mismatch = [f"{k}: checkpoint {meta['sae_cfg'].get(k)!r} vs now {v!r}"
                    for k, v in self.sae_cfg.to_dict().items() if meta["sae_cfg"].get(k) != v]
        defaults = asdict(TrainConfig())   # a field the checkpoint predates had its default value
        mismatch += [f"{k}: checkpoint {meta['train_cfg'].get(k, defaults[k])!r} vs now {v!r}"
                     for k, v in asdict(self.cfg).items()
                     if k not in ("max_steps", "log_every", "checkpoint_every")
                     and meta["train_cfg"].get(k, defaults[k]) != v]
        if mismatch:
            raise TrainingError(f"checkpoint {path} was made with another configuration: " + "; ".join(mismatch))
        self.sae.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("sae.")})
        self.sae.to(self.device)
        self.tokens_since_fired = tensors["tokens_since_fired"].to(self.device)
        state: dict = {}
        for key, value in tensors.items():
            if key.startswith("adam."):
                _, i, name = key.split(".", 2)
                state.setdefault(int(i), {})[name] = value if name == "step" else value.to(self.device)
        self.optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
        self.step, self.vectors_seen = meta["step"], meta["vectors_seen"]
        self.initialised, self.history = meta["initialised"], meta["history"]
        self.finished = meta.get("finished", False)
