"""The ComfyUI-facing layer that both the nodes and the training CLI use: which family and blocks a
loaded model has, how a block is patched (and recorded) per family, and model loading.

Imports ComfyUI; the pure data about each family lives in sae_core.families.
"""
