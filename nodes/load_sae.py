"""LoadSAE: an SAE or SAE set from models/sae, in the native format or SDLens / sparsify / SAELens."""
from __future__ import annotations

import folder_paths
from comfy_api.latest import io

from ..sae_core import SD1_BLOCKS, SAEInfo, load_sae
from ..sae_core.concept_dictionary import ConceptDictionary
from .model_folders import dictionary_files, sae_files
from .sae_type import CATEGORY, SAE, node_id

FROM_FILE = "from file"
# "<family> <diffusers block name>": what a foreign SAE (SDLens, SAELens) was trained on.
SDXL_BLOCKS = ["down_blocks.1.attentions.0", "down_blocks.1.attentions.1", "down_blocks.2.attentions.0",
               "down_blocks.2.attentions.1", "mid_block.attentions.0", "up_blocks.0.attentions.0",
               "up_blocks.0.attentions.1", "up_blocks.0.attentions.2", "up_blocks.1.attentions.0",
               "up_blocks.1.attentions.1", "up_blocks.1.attentions.2"]
FOREIGN_BLOCKS = [f"sd1 {d}" for d, _ in SD1_BLOCKS.values()] + [f"sdxl {d}" for d in SDXL_BLOCKS]


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
        path = folder_paths.get_full_path_or_raise("sae", sae_name)
        info = None
        if block_for_foreign != FROM_FILE:
            family, diffusers = block_for_foreign.split(" ", 1)
            info = SAEInfo(model_family=family, block_diffusers=diffusers, cond="both")
        sae_set = load_sae(path, info=info)
        for e in sae_set:
            if not (e.info.block or e.info.block_diffusers):
                raise ValueError(f"Load SAE: {sae_name} ({e.info.source_format}) names no block, neither in its "
                                 f"config nor in its folder names; choose it in block_for_foreign, one of: "
                                 f"{', '.join(FOREIGN_BLOCKS)}")
        if dictionary != "none":
            concepts = ConceptDictionary.load(folder_paths.get_full_path_or_raise("sae_dictionaries", dictionary))
            concepts.check_built_from(sae_set)   # a dictionary of other weights would name other concepts
            sae_set.dictionary = concepts
        return io.NodeOutput(sae_set)

    @classmethod
    def validate_inputs(cls, sae_name):
        """Runs when a prompt is queued, so a workflow whose SAE file is missing is refused up front
        with the folders searched (a missing dictionary is caught by the combo check)."""
        if folder_paths.get_full_path("sae", sae_name) is None:
            return (f"Load SAE: SAE file {sae_name!r} not found in models/sae "
                    f"({', '.join(folder_paths.get_folder_paths('sae'))})")
        return True

    @classmethod
    def fingerprint_inputs(cls, sae_name, dictionary, block_for_foreign):
        import os
        files = [folder_paths.get_full_path("sae", sae_name)]
        if dictionary != "none":
            files.append(folder_paths.get_full_path("sae_dictionaries", dictionary))
        return tuple(os.path.getmtime(f) if f and os.path.exists(f) else None for f in files)
