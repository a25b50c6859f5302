"""ConceptMapPreview: which concepts are active where, at a chosen point of the reverse process.

Design: the node samples by itself (same inputs as KSampler) up to the chosen step with a
capture wrapper on the block, then stops. A self-contained node needs no hidden state shared
between a "capture" node and a "read" node, and it stops early: the paper's headline map
(t = 1.0, at_percent 0) costs one U-Net call, not a whole generation. While it samples, the
step preview ComfyUI shows on the node (the progress bar's preview image, as KSampler's) is the
concept map of the step just run, so the composition can be watched as it appears.
"""
from __future__ import annotations

import comfy.samplers
import comfy.sample
import comfy.utils
import latent_preview
import torch
import torch.nn.functional as F
from comfy_api.latest import io, ui
from PIL import Image

from ..sae_core.concept_render import colour_map, normalised_map
from ..sae_core.interventions import concept_map, top_concepts
from ..sae_core.sae_set import select_entry
from ..host.block_patch import BlockCall, StepClock, TimestepRecorder, patch_block
from .concept_choice import check_concept, concept_inputs, concept_text
from .sae_memory import DeviceFallback, attach_saes
from .sae_type import CATEGORY, SAE, node_id
from .steering import parse_concept, sae_groups
from .window_inputs import block_input

OVERLAY_MAP_WEIGHT = 0.55   # the map's share when blended over the predicted image


class LatestDelta:
    """BlockEdit that changes nothing and keeps the first image's Delta [C, H, W] of the latest
    call (the positive row where the call has one), with that call's sigma, for the live map."""

    def __init__(self):
        self.delta, self.sigma = None, None

    def __call__(self, delta: torch.Tensor, call: BlockCall):
        kinds = call.row_kinds
        i = kinds.index("cond") if "cond" in kinds else 0
        self.delta, self.sigma = delta[i].detach(), float(call.sigmas[i])
        return None


def latent_rgb(model, x0: torch.Tensor, out_hw) -> torch.Tensor:
    """Cheap preview of a latent [B, 4, h, w] -> [B, H, W, 3] with the model's latent_rgb_factors."""
    fmt = model.model.latent_format
    if getattr(fmt, "latent_rgb_factors", None) is None:
        return torch.full((x0.shape[0], *out_hw, 3), 0.5)
    factors = torch.tensor(fmt.latent_rgb_factors, dtype=torch.float32)
    bias = torch.tensor(fmt.latent_rgb_factors_bias or [0.0, 0.0, 0.0], dtype=torch.float32)
    rgb = torch.einsum("bchw,cr->brhw", x0.float().cpu(), factors) + bias[None, :, None, None]
    rgb = ((rgb + 1) / 2).clamp(0, 1)
    return F.interpolate(rgb, size=out_hw, mode="bilinear", align_corners=False).permute(0, 2, 3, 1)


def map_image(sae, delta_rows: torch.Tensor, hw, out_hw, preview: torch.Tensor | None) -> tuple:
    """(RGB [H, W, 3] of the top concept per position, top ids [P], strengths [P])."""
    top_ids, strength = top_concepts(sae, delta_rows)
    img = colour_map(top_ids.reshape(hw).cpu(), strength.reshape(hw).cpu(), out_hw)
    if preview is not None:
        img = OVERLAY_MAP_WEIGHT * img + (1 - OVERLAY_MAP_WEIGHT) * preview
    return img.clamp(0, 1), top_ids.cpu(), strength.float().cpu()


class ConceptMapPreview(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=node_id("ConceptMapPreview"),
            display_name="Concept Map Preview",
            category=CATEGORY,
            is_output_node=True,   # shows its map even when nothing downstream consumes it
            description="Samples like KSampler up to the chosen point of the reverse process and shows which "
                        "SAE concept is strongest at each position of the block. At the first step the "
                        "image is still noise, yet the mid block already shows the composition. While it "
                        "samples, the node's step preview is the live concept map.",
            inputs=[
                io.Model.Input("model", tooltip="The model, as given to your KSampler (steered or not)."),
                SAE.Input("sae", tooltip="From Load SAE; must have an SAE for the block."),
                io.Conditioning.Input("positive", tooltip="The positive conditioning of your KSampler."),
                io.Conditioning.Input("negative", tooltip="The negative conditioning of your KSampler."),
                io.Latent.Input("latent_image", tooltip="The latent your KSampler starts from (its size sets "
                                                        "the map's size)."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Use the same seed as your KSampler to see its composition."),
                io.Int.Input("steps", default=50, min=1, max=10000, tooltip="Steps of the full schedule."),
                io.Float.Input("cfg", default=7.5, min=0.0, max=100.0, step=0.1,
                               tooltip="Classifier-free guidance scale, as in your KSampler."),
                io.Combo.Input("sampler_name", options=comfy.samplers.SAMPLER_NAMES, default="ddim",
                               tooltip="Sampler, as in your KSampler."),
                io.Combo.Input("scheduler", options=comfy.samplers.SCHEDULER_NAMES, default="normal",
                               tooltip="Scheduler, as in your KSampler."),
                io.Float.Input("at_percent", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Where to look: 0 = first step (the paper's t = 1.0, pure noise), "
                                       "0.5 = middle, 1 = last step. Sampling stops there."),
                block_input(),
                *concept_inputs("whose map is the MASK output", allow_none=True),
                io.Boolean.Input("overlay", default=True,
                                 tooltip="Blend the map over a preview of the predicted image at that step."),
                io.Int.Input("top_n", default=10, min=1, max=100, tooltip="Concepts listed in the text."),
                io.Boolean.Input("live_preview", default=True,
                                 tooltip="While sampling, show each step's concept map as the node's step "
                                         "preview (instead of ComfyUI's latent preview)."),
            ],
            outputs=[
                io.Image.Output(display_name="concept_map", tooltip="Top concept per position, one colour each."),
                io.Mask.Output(display_name="concept_mask", tooltip="The chosen concept's activation in [0, 1]."),
                io.String.Output(display_name="top_concepts", tooltip="Strongest concepts with their labels."),
            ],
        )

    @classmethod
    def validate_inputs(cls, concept, concept_ids=None):
        return check_concept(concept, concept_ids, "Concept Map Preview")

    @classmethod
    def execute(cls, model, sae, positive, negative, latent_image, seed, steps, cfg, sampler_name, scheduler,
                at_percent, block, overlay, top_n, concept="", concept_ids=None, live_preview=True) -> io.NodeOutput:
        concept = concept_text(concept, concept_ids)
        groups = sae_groups(model, sae, block)
        block = "middle_block.1" if "middle_block.1" in groups else sorted(groups)[0]
        at_block = groups[block]
        clock = StepClock(model)   # the family's rule for the paper's t of a step
        quantity = at_block[0].info.quantity   # what the SAEs read: Delta or the block output
        latent = comfy.sample.fix_empty_latent_channels(model, latent_image["samples"])
        noise = comfy.sample.prepare_noise(latent, seed, latent_image.get("batch_index"))
        probe = comfy.samplers.KSampler(model, steps=steps, device=model.load_device, sampler=sampler_name,
                                        scheduler=scheduler, denoise=1.0, model_options=model.model_options)
        n_steps = len(probe.sigmas) - 1
        idx = min(int(round(at_percent * n_steps)), n_steps - 1)
        target = float(probe.sigmas[idx])
        schedule = {"sample_sigmas": probe.sigmas}
        capture = TimestepRecorder({target: target})
        patched = patch_block(model, block, capture, quantity=quantity)
        out_hw = (latent.shape[-2] * 8, latent.shape[-1] * 8)
        live = LatestDelta() if live_preview else None
        if live is not None:
            patched = patch_block(patched, block, live, quantity=quantity)
        attach_saes(patched, [e.sae for e in at_block])
        device = DeviceFallback()
        x0_at = {}
        progress = latent_preview.prepare_callback(patched, idx + 1)
        pbar = comfy.utils.ProgressBar(idx + 1)

        def callback(step, x0, x, total_steps):
            if step == idx:
                x0_at["x0"] = x0.detach()
            if live is None or live.delta is None:
                progress(step, x0, x, idx + 1)
                return
            C, h, w = live.delta.shape
            entry = select_entry(at_block, clock.t(live.sigma, schedule), "cond")
            sae_model = device.on(entry.sae, live.delta.device)
            with torch.no_grad():
                rows = live.delta.reshape(C, h * w).t().float()
                base = latent_rgb(model, x0[:1], out_hw)[0] if overlay else None
                img, _, _ = map_image(sae_model, rows, (h, w), out_hw, base)
            frame = Image.fromarray((img.numpy() * 255).round().astype("uint8"))
            pbar.update_absolute(step + 1, idx + 1, ("JPEG", frame, latent_preview.MAX_PREVIEW_RESOLUTION))

        comfy.sample.sample(patched, noise, steps, cfg, sampler_name, scheduler, positive, negative, latent,
                            last_step=idx + 1, force_full_denoise=False, callback=callback,
                            disable_pbar=True, seed=seed, noise_mask=latent_image.get("noise_mask"))
        delta = capture.seen.get((target, "cond"), capture.seen.get((target, "uncond")))
        if delta is None:
            raise RuntimeError(f"ConceptMapPreview: block {block} was not called at sigma {target:.4f}; "
                               f"is it part of this model's U-Net?")
        t = clock.t(target, schedule)
        entry = select_entry(at_block, t, "cond")
        sae_model = entry.sae          # wherever ComfyUI left it; the captured rows go there
        concepts = (sae.dictionary.for_sae(entry.info.block or entry.info.block_diffusers, entry.info.t, entry.info.cond)
                    if sae.dictionary else None)
        B, C, h, w = delta.shape
        preview = latent_rgb(model, x0_at["x0"], out_hw) if overlay and "x0" in x0_at else None
        images, masks, lines = [], [], []
        ids, words = parse_concept(concept) if concept.strip() else (None, [])
        if words:
            if sae.dictionary is None:
                raise ValueError(f"ConceptMapPreview: concept {concept!r} is a word but the SAE has no dictionary")
            if concepts is None:
                raise ValueError(f"ConceptMapPreview: concept {concept!r} is a word but the dictionary has no concepts "
                                 f"for {entry.info.label()} (built before that SAE was trained?); give concept ids")
            ids = sorted({c for wd in words for c in concepts.lookup(wd)})
            if not ids:
                from .concept_choice import nearest_labels
                labels = sorted({lab for c in concepts.concepts.values() for lab in c.get("labels", [])})
                raise ValueError(f"ConceptMapPreview: no concept at {block} is labelled {words}; nearest labels "
                                 f"there: {nearest_labels(words[0], labels)}")
        for b in range(B):
            rows = delta[b].reshape(C, h * w).t().to(sae_model.W_dec.device)
            with torch.no_grad():
                img, top_ids, strength = map_image(sae_model, rows, (h, w), out_hw,
                                                   None if preview is None else preview[min(b, preview.shape[0] - 1)])
                images.append(img)
                masks.append(normalised_map(concept_map(sae_model, rows, ids).reshape(h, w), out_hw).cpu()
                             if ids else torch.zeros(out_hw))
            counts = torch.bincount(top_ids, minlength=sae_model.n_latents)
            total = torch.zeros(sae_model.n_latents).index_add_(0, top_ids, strength)
            order = torch.argsort(total, descending=True)[:top_n]
            lines.append(f"image {b}: {block}, step {idx + 1}/{n_steps} (t = {t if t is None else round(t, 3)}), "
                         f"SAE {entry.info.label()}")
            for cid in order.tolist():
                if counts[cid] == 0:
                    break
                labels = ", ".join(concepts.labels(cid)[:5]) if concepts else ""
                lines.append(f"  concept {cid}: top at {int(counts[cid])}/{h * w} positions"
                             + (f" [{labels}]" if labels else ""))
        image = torch.stack(images)
        return io.NodeOutput(image, torch.stack(masks), "\n".join(lines), ui=ui.PreviewImage(image, cls=cls))
