"""Training, judging and measuring the Toy World (the model itself, its vocabulary, renderer and
ComfyUI loading are in host/toyworld, shared with the nodes; MODEL_CARD.md there).

- train.py:    `ToyTrainConfig`, `train`, `export_weights` (`sae-concepts toyworld train/export`).
- detect.py:   `detect(image)` -> objects (colour, shape, centre, bbox), count, background style.
- evaluate.py: `held_out_prompts`, `judge(prompt, image)`, `evaluate_model` (the quality bar).
- paper/:      the paper's measurements on the toy model (`sae-concepts toyworld paper`), one module a stage.
"""
