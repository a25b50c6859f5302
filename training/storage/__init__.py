"""Storage shared by every stage: activation shards, prompt files, mask folders."""
