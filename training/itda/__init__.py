"""`sae-concepts itda`: ITDA dictionaries from the same shards as `train`."""
