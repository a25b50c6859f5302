"""Register models/sae so LoadSAE can list SAE files and concept dictionaries."""
from __future__ import annotations

import os

import folder_paths

SAE_EXTENSIONS = {".safetensors", ".pth"}
FOREIGN_CONFIGS = ("config.json", "cfg.json")


def register() -> None:
    path = os.path.join(folder_paths.models_dir, "sae")
    for key, exts in (("sae", SAE_EXTENSIONS), ("sae_dictionaries", {".json"})):
        if key in folder_paths.folder_names_and_paths:
            paths, old = folder_paths.folder_names_and_paths[key]
            if path not in paths:
                paths.append(path)
            folder_paths.folder_names_and_paths[key] = (paths, set(old) | exts)
        else:
            folder_paths.folder_names_and_paths[key] = ([path], set(exts))


def sae_files() -> list[str]:
    register()
    return folder_paths.get_filename_list("sae")


def dictionary_files() -> list[str]:
    register()
    return [f for f in folder_paths.get_filename_list("sae_dictionaries")
            if os.path.basename(f) not in FOREIGN_CONFIGS]
