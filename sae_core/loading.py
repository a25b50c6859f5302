"""One entry point that reads an SAE or SAE set in any supported format."""
from __future__ import annotations

from pathlib import Path

from .blocks import canonical_block
from .errors import SAEFileError
from .foreign_formats import FOREIGN_LOADERS, detect_foreign
from .itda import is_itda, load_itda
from .native_format import is_native, load_native, read_safetensors
from .sae_set import SAEInfo, SAESet


def _info_for_hookpoint(name: str) -> SAEInfo:
    """sparsify names folders by hookpoint; an SD1.x block name there tells us the block."""
    try:
        return SAEInfo(model_family="sd1", block=canonical_block(name), cond="both")
    except ValueError:
        return SAEInfo(model_family="unknown", block=name, cond="both")


def load_sae(path, info: SAEInfo | None = None) -> SAESet:
    """Native .safetensors file, a foreign SAE folder (or a file inside one), or a folder of
    foreign SAE folders named by hookpoint (sparsify's multi-layer layout)."""
    path = Path(path)
    if not path.exists():
        raise SAEFileError(path, "no such file or folder")
    if path.is_file():
        loader = detect_foreign(path.parent)
        if path.suffix == ".safetensors":
            meta, tensors = read_safetensors(path)
            if is_itda(meta):
                return load_itda(path, meta, tensors)
            if is_native(meta):
                return load_native(path, meta, tensors)
            if loader is None:
                raise SAEFileError(path, f"unknown format: no sae_concepts metadata and no cfg.json "
                                         f"beside it; tensors: {sorted(tensors)[:12]}")
        elif loader is None:
            known = " / ".join(" + ".join(m) for m in FOREIGN_LOADERS)
            raise SAEFileError(path, f"unknown format: expected a native .safetensors file or a folder "
                                     f"with one of: {known}")
        return SAESet([loader(path.parent, info)], source=str(path.parent))
    loader = detect_foreign(path)
    if loader is not None:
        return SAESet([loader(path, info)], source=str(path))
    subdirs = sorted(p for p in path.iterdir() if p.is_dir() and detect_foreign(p))
    if subdirs:
        return SAESet([detect_foreign(p)(p, _info_for_hookpoint(p.name)) for p in subdirs], source=str(path))
    natives = sorted(path.glob("*.safetensors"))
    hint = f"; did you mean the file {natives[0].name}?" if natives else ""
    raise SAEFileError(path, "folder holds no SAE in a known layout (SDLens config.json + state_dict.pth, "
                             "sparsify cfg.json + sae.safetensors, SAELens cfg.json + "
                             f"sae_weights.safetensors){hint}")
