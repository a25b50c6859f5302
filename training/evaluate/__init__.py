"""Stage 4: FVU / L0 / dead fraction, cohesion, inter-concept similarity, composition IoU."""
