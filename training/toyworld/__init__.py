"""The Toy World: a small text-to-image diffusion model with SD1.x's exact U-Net topology
(ComfyUI's own `UNetModel`), trained here from scratch on drawn scenes whose objects, masks,
labels and styles are known, so the paper's measurements run on a network that has learned
something. See MODEL_CARD.md for the shipped weights.

API (import ComfyUI first: `sae_concepts.host.comfy_env.import_comfy`):
- world.py:    `sample_scene(rng)`, `render(scene)` -> image + object masks + labels + style,
               `scene_prompt`, `tokenize`, `parse_prompt`, the vocabulary (COLOURS, SHAPES, STYLES).
- sampling.py: `load_toy_model(path)` -> (ModelPatcher, ToyTextEncoder); `encode_prompt(te, text)`
               -> CONDITIONING; `decode(latent)` -> IMAGE, `encode(image)` -> latent;
               `PixelUnshuffleAutoencoder` (the "VAE"); `sample_images(...)` (KSampler's path);
               `SHIPPED_WEIGHTS`, `DEFAULT_SAMPLER`.
- detect.py:   `detect(image)` -> objects (colour, shape, centre, bbox), count, background style.
- evaluate.py: `held_out_prompts`, `judge(prompt, image)`, `evaluate_model` (the quality bar).
- train.py:    `ToyTrainConfig`, `train`, `export_weights` (`sae-concepts toyworld train/export`).
- model.py:    `ToyModelConfig` (widths, SD1.x UNet kwargs), `ToyTextEncoder`, `build_unet`.
"""
