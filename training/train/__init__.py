"""Stage 2: train one SAE per (block, t, cond) from shards."""
