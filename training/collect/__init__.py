"""Stage 1: run a checkpoint through ComfyUI's own model code and record Delta at the blocks."""
