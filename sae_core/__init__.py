"""Pure-PyTorch SAE core: no ComfyUI import may appear anywhere in this package."""
from .blocks import PAPER_BLOCKS, PAPER_TIMESTEPS, SD1_BLOCKS, canonical_block
from .config import SaeConfig
from .errors import SAEFileError
from .loading import load_sae
from .native_format import save_sae_set
from .sae import SparseCode, TopKSAE
from .sae_set import SAEEntry, SAEInfo, SAESet
from .trainer import TrainConfig, Trainer, TrainingError

__all__ = [
    "PAPER_BLOCKS", "PAPER_TIMESTEPS", "SD1_BLOCKS", "canonical_block", "SaeConfig",
    "SAEFileError", "load_sae", "save_sae_set", "SparseCode", "TopKSAE", "SAEEntry", "SAEInfo", "SAESet",
    "TrainConfig", "Trainer", "TrainingError",
]
