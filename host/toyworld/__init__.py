"""The Toy World model as ComfyUI runs it: a small text-to-image diffusion model with SD1.x's exact
U-Net topology (ComfyUI's own `UNetModel`), trained by this project on drawn scenes whose objects,
masks, labels and styles are known. Here is what the nodes and the pipeline both need; how it is
trained, judged and used for the paper's measurements lives in training/toyworld. See
MODEL_CARD.md for the shipped weights (weights/, with its SAE set and dictionary in weights/sae/).

API (import ComfyUI first: `sae_concepts.host.comfy_env.import_comfy`):
- world.py:       `sample_scene(rng)`, `render(scene)` -> image + object masks + labels + style,
                  `scene_prompt`, `tokenize`, `parse_prompt`, the vocabulary (COLOURS, SHAPES, STYLES).
- model.py:       `ToyModelConfig` (widths, SD1.x UNet kwargs), `ToyTextEncoder`, `build_unet`.
- sampling.py:    `load_toy_model(path)` -> (ModelPatcher, ToyTextEncoder); `encode_prompt(te, text)`
                  -> CONDITIONING; `PixelUnshuffleAutoencoder` (the "VAE"); `sample_images(...)`
                  (KSampler's path); `SHIPPED_WEIGHTS`, `DEFAULT_SAMPLER` (drawing),
                  `PAPER_SAMPLER` (measuring and steering: deterministic DDIM).
- comfy_parts.py: `load_toy_parts(path)` -> ComfyUI's MODEL, CLIP and VAE objects.
"""
