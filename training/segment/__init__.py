"""Stage 2a: tags -> boxes -> masks for held-out images (Grounding DINO, SAM, CLIP tagger)."""
