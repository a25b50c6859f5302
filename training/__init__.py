"""Headless pipeline (collect -> train -> dictionary -> evaluate) behind the `sae-concepts` CLI."""
