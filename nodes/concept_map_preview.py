"""ConceptMapPreview: which concepts are active where, at a chosen point of the reverse process.

Design: the node samples by itself (same inputs as KSampler) up to the chosen step with a
capture wrapper on the block, then stops. A self-contained node needs no hidden state shared
between a "capture" node and a "read" node, and it stops early: the paper's headline map
(t = 1.0, at_percent 0) costs one U-Net call, not a whole generation.
"""
from __future__ import annotations

import comfy.samplers
import comfy.sample
import latent_preview
import torch
import torch.nn.functional as F
from comfy_api.latest import io, ui

from ..sae_core.concept_render import colour_map, normalised_map
from ..sae_core.interventions import concept_map, top_concepts
from ..sae_core.sae_set import select_entry
from .block_patch import TimestepRecorder, patch_block, sigma_to_t
from .sae_type import SAE
from .steering import parse_concept, sae_groups
from .window_inputs import block_input


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


class ConceptMapPreview(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ConceptMapPreview",
            display_name="Concept Map Preview",
            category="sae_concepts",
            is_output_node=True,   # shows its map even when nothing downstream consumes it
            description="Samples like KSampler up to the chosen point of the reverse process and shows which "
                        "SAE concept is strongest at each position of the block. At the first step the "
                        "image is still noise, yet the mid block already shows the composition.",
            inputs=[
                io.Model.Input("model"),
                SAE.Input("sae", tooltip="From Load SAE; must have an SAE for the block."),
                io.Conditioning.Input("positive"),
                io.Conditioning.Input("negative"),
                io.Latent.Input("latent_image"),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Use the same seed as your KSampler to see its composition."),
                io.Int.Input("steps", default=50, min=1, max=10000, tooltip="Steps of the full schedule."),
                io.Float.Input("cfg", default=7.5, min=0.0, max=100.0, step=0.1),
                io.Combo.Input("sampler_name", options=comfy.samplers.SAMPLER_NAMES, default="ddim"),
                io.Combo.Input("scheduler", options=comfy.samplers.SCHEDULER_NAMES, default="normal"),
                io.Float.Input("at_percent", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Where to look: 0 = first step (the paper's t = 1.0, pure noise), "
                                       "0.5 = middle, 1 = last step. Sampling stops there."),
                block_input(),
                io.String.Input("concept", default="", optional=True,
                                tooltip="Optional ids ('12, 40') or a dictionary word: its map is the MASK."),
                io.Boolean.Input("overlay", default=True,
                                 tooltip="Blend the map over a preview of the predicted image at that step."),
                io.Int.Input("top_n", default=10, min=1, max=100, tooltip="Concepts listed in the text."),
            ],
            outputs=[
                io.Image.Output(display_name="concept_map", tooltip="Top concept per position, one colour each."),
                io.Mask.Output(display_name="concept_mask", tooltip="The chosen concept's activation in [0, 1]."),
                io.String.Output(display_name="top_concepts", tooltip="Strongest concepts with their labels."),
            ],
        )

    @classmethod
    def execute(cls, model, sae, positive, negative, latent_image, seed, steps, cfg, sampler_name, scheduler,
                at_percent, block, overlay, top_n, concept="") -> io.NodeOutput:
        groups = sae_groups(model, sae, block)
        block = "middle_block.1" if "middle_block.1" in groups else sorted(groups)[0]
        at_block = groups[block]
        latent = comfy.sample.fix_empty_latent_channels(model, latent_image["samples"])
        noise = comfy.sample.prepare_noise(latent, seed, latent_image.get("batch_index"))
        probe = comfy.samplers.KSampler(model, steps=steps, device=model.load_device, sampler=sampler_name,
                                        scheduler=scheduler, denoise=1.0, model_options=model.model_options)
        n_steps = len(probe.sigmas) - 1
        idx = min(int(round(at_percent * n_steps)), n_steps - 1)
        target = float(probe.sigmas[idx])
        capture = TimestepRecorder({target: target})
        patched = patch_block(model, block, capture)
        x0_at = {}
        progress = latent_preview.prepare_callback(patched, idx + 1)

        def callback(step, x0, x, total_steps):
            if step == idx:
                x0_at["x0"] = x0.detach()
            progress(step, x0, x, idx + 1)
        comfy.sample.sample(patched, noise, steps, cfg, sampler_name, scheduler, positive, negative, latent,
                            last_step=idx + 1, force_full_denoise=False, callback=callback,
                            disable_pbar=True, seed=seed, noise_mask=latent_image.get("noise_mask"))
        delta = capture.seen.get((target, "cond"), capture.seen.get((target, "uncond")))
        if delta is None:
            raise RuntimeError(f"ConceptMapPreview: block {block} was not called at sigma {target:.4f}; "
                               f"is it part of this model's U-Net?")
        t = sigma_to_t(model.get_model_object("model_sampling"), target)
        entry = select_entry(at_block, t, "cond")
        sae_model = entry.sae
        concepts = (sae.dictionary.for_sae(entry.info.block or entry.info.block_diffusers, entry.info.t, entry.info.cond)
                    if sae.dictionary else None)
        B, C, h, w = delta.shape
        out_hw = (latent.shape[-2] * 8, latent.shape[-1] * 8)
        preview = latent_rgb(model, x0_at["x0"], out_hw) if overlay and "x0" in x0_at else None
        images, masks, lines = [], [], []
        ids, words = parse_concept(concept) if concept.strip() else (None, [])
        if words:
            if concepts is None:
                raise ValueError(f"ConceptMapPreview: concept {concept!r} is a word but the SAE has no dictionary")
            ids = sorted({c for wd in words for c in concepts.lookup(wd)})
            if not ids:
                raise ValueError(f"ConceptMapPreview: no concept at {block} is labelled {words}")
        for b in range(B):
            rows = delta[b].reshape(C, h * w).t()
            with torch.no_grad():
                top_ids, strength = top_concepts(sae_model, rows)
                img = colour_map(top_ids.reshape(h, w), strength.reshape(h, w), out_hw)
                if preview is not None:
                    img = 0.55 * img + 0.45 * preview[min(b, preview.shape[0] - 1)]
                images.append(img)
                masks.append(normalised_map(concept_map(sae_model, rows, ids).reshape(h, w), out_hw)
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
        image = torch.stack(images).clamp(0, 1)
        return io.NodeOutput(image, torch.stack(masks), "\n".join(lines), ui=ui.PreviewImage(image, cls=cls))
