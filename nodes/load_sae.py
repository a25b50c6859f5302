"""LoadSAE: an SAE or SAE set from models/sae, in the native format or SDLens / sparsify / SAELens."""
from __future__ import annotations

import os

import folder_paths
from comfy_api.latest import io

from ..sae_core import SD1_BLOCKS, SAEInfo, load_sae
from ..sae_core.concept_dictionary import ConceptDictionary
from ..sae_core.errors import ConfigError, SAEConceptsError
from ..sae_core.families import released_dit_blocks
from ..sae_core.families.sdxl import SDXL_BLOCKS as SDXL_REGISTRY_BLOCKS
from .model_folders import dictionary_files, sae_files
from .sae_type import CATEGORY, SAE, node_id

FROM_FILE = "from file"
# "<family> <diffusers block name>": what a foreign SAE (SDLens, SAELens) was trained on, from the
# family registry (the DiT families' blocks of their largest releases by their diffusers names:
# Flux.1's 19 double and 38 single, SD3.5 Large's 38 joint).
SDXL_BLOCKS = [d for d, _ in SDXL_REGISTRY_BLOCKS.values()]
FOREIGN_BLOCKS = ([f"sd1 {d}" for d, _ in SD1_BLOCKS.values()] + [f"sdxl {d}" for d in SDXL_BLOCKS]
                  + [f"{f.name} {s.alias}.{i}" for f, s, i in released_dit_blocks()])


_LOADED: dict = {}   # (files, mtimes, block choice) -> SAESet: validation loads, execute reuses
_KEEP = 4


def load_checked(sae_name: str, dictionary: str, block_for_foreign: str):
    """The SAE set with its dictionary, every check done; raises SAEConceptsError for user errors."""
    path = folder_paths.get_full_path_or_raise("sae", sae_name)
    dict_path = folder_paths.get_full_path_or_raise("sae_dictionaries", dictionary) if dictionary != "none" else None
    key = tuple((f, os.path.getmtime(f)) for f in (path, dict_path) if f) + (block_for_foreign,)
    if key in _LOADED:
        return _LOADED[key]
    info = None
    if block_for_foreign != FROM_FILE:
        family, diffusers = block_for_foreign.split(" ", 1)
        info = SAEInfo(model_family=family, block_diffusers=diffusers, cond="both")
    sae_set = load_sae(path, info=info)
    for e in sae_set:
        if not (e.info.block or e.info.block_diffusers):
            raise ConfigError(f"{sae_name} ({e.info.source_format}) names no block, neither in its config nor in "
                              f"its folder names; choose it in block_for_foreign, one of: {', '.join(FOREIGN_BLOCKS)}")
    if dict_path is not None:
        concepts = ConceptDictionary.load(dict_path)
        concepts.check_built_from(sae_set)   # a dictionary of other weights would name other concepts
        sae_set.dictionary = concepts
    while len(_LOADED) >= _KEEP:
        _LOADED.pop(next(iter(_LOADED)))
    _LOADED[key] = sae_set
    return sae_set


class LoadSAE(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=node_id("LoadSAE"),
            display_name="Load SAE",
            category=CATEGORY,
            description="Loads a sparse autoencoder (or a set of them, one per block / timestep / cond) "
                        "from ComfyUI/models/sae.",
            inputs=[
                io.Combo.Input("sae_name", options=sae_files(),
                               tooltip="A native .safetensors SAE set, or a file inside an SDLens "
                                       "(state_dict.pth), sparsify (sae.safetensors) or SAELens "
                                       "(sae_weights.safetensors) folder."),
                io.Combo.Input("dictionary", options=["none"] + dictionary_files(), default="none",
                               tooltip="Concept dictionary (.json from `sae-concepts dictionary`) that "
                                       "names each concept id; lets steering nodes take words."),
                io.Combo.Input("block_for_foreign", options=[FROM_FILE] + FOREIGN_BLOCKS, default=FROM_FILE,
                               tooltip="The model family and block a foreign SAE was trained on. 'from file': "
                                       "native files record it; SAELens files name it in hook_name; SDLens and "
                                       "SAELens folders are read by name (SDLens's own layout: "
                                       "'<block>_k10_hidden5120_.../final', e.g. up_blocks.0.attentions.1, taken "
                                       "as SDXL). Pick it here where neither says."),
            ],
            outputs=[SAE.Output(display_name="sae", tooltip="The SAE set.")],
        )

    @classmethod
    def execute(cls, sae_name, dictionary, block_for_foreign) -> io.NodeOutput:
        return io.NodeOutput(load_checked(sae_name, dictionary, block_for_foreign))

    @classmethod
    def validate_inputs(cls, sae_name, dictionary="none", block_for_foreign=FROM_FILE):
        """Runs when a prompt is queued: a missing, unreadable or unusable SAE file, a file that
        names no block, or a dictionary of other weights is refused on the node before anything
        runs (every user error of the core is an SAEConceptsError). The loaded set is kept for
        execute."""
        if folder_paths.get_full_path("sae", sae_name) is None:
            return (f"Load SAE: SAE file {sae_name!r} not found in models/sae "
                    f"({', '.join(folder_paths.get_folder_paths('sae'))})")
        # Taking these inputs here turns off ComfyUI's own option checks for them: do them.
        if dictionary != "none" and folder_paths.get_full_path("sae_dictionaries", dictionary) is None:
            return f"Load SAE: concept dictionary {dictionary!r} not found in models/sae"
        if block_for_foreign not in [FROM_FILE] + FOREIGN_BLOCKS:
            return f"Load SAE: block_for_foreign {block_for_foreign!r} is not one of {[FROM_FILE] + FOREIGN_BLOCKS}"
        try:
            load_checked(sae_name, dictionary, block_for_foreign)
        except SAEConceptsError as e:
            return f"Load SAE: {e}"
        return True

    @classmethod
    def fingerprint_inputs(cls, sae_name, dictionary, block_for_foreign):
        files = [folder_paths.get_full_path("sae", sae_name)]
        if dictionary != "none":
            files.append(folder_paths.get_full_path("sae_dictionaries", dictionary))
        return tuple(os.path.getmtime(f) if f and os.path.exists(f) else None for f in files)
