"""Loaders for TopK SAEs trained elsewhere, converted to TopKSAE with identical outputs.

- SDLens (sdxl-unbox): folder with config.json + state_dict.pth (torch.save of
  {"state_dict": {...}}), optional mean.pt / std.pt. Read with weights_only=True only.
- sparsify (EleutherAI): folder with cfg.json + sae.safetensors.
- SAELens: folder with cfg.json + sae_weights.safetensors.
SDLens and SAELens files carry no block field: the block is read from SAELens's `hook_name`
(and `model_name`, top level or under `metadata`) where set, else from the folder names (SDLens's own layout is
`<diffusers block>_k10_hidden5120_.../final/`); callers may pass it instead (SAEInfo).
"""
from __future__ import annotations

import json
import pickle
import re
import zipfile
from pathlib import Path

import torch

from .config import SaeConfig
from .errors import SAEFileError
from .families import FAMILIES, guess_family
from .native_format import read_safetensors
from .sae import TopKSAE
from .sae_set import SAEEntry, SAEInfo
from .validation import check_tensor, positive_int, require_keys


def read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise SAEFileError(path, "file not found") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SAEFileError(path, f"not valid JSON: {e}") from e
    if not isinstance(value, dict):
        raise SAEFileError(path, f"expected a JSON object, got {type(value).__name__}")
    return value


def torch_load_safe(path: Path):
    """torch.load restricted to tensors and plain containers (never arbitrary pickle)."""
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError as e:
        raise SAEFileError(path, "file not found") from e
    except pickle.UnpicklingError as e:
        raise SAEFileError(path, f"refused: holds objects other than tensors, which are only "
                                 f"loadable through unsafe pickle ({e})") from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise SAEFileError(path, f"cannot be read as a torch file (truncated or corrupt?): {e}") from e


# Block names as diffusers (U-Nets) and ComfyUI/BFL (Flux, SD3) write them, inside longer names
# such as "unet.up_blocks.0.attentions.1_k10_hidden5120_auxk256_bs4096_lr0.0001".
_BLOCK_IN_NAME = re.compile(r"(?<![a-z_])((?:down|up)_blocks\.\d+\.attentions\.\d+|mid_block\.attentions\.\d+|"
                            r"(?:single_|double_|single_transformer_|transformer_|joint_)blocks\.\d+)")
_FAMILY_IN_NAME = (("sdxl", re.compile(r"sdxl|sd_xl|stable-diffusion-xl")),
                   ("flux", re.compile(r"flux")),
                   ("sd3", re.compile(r"sd-?3|stable-diffusion-3")),
                   ("sd1", re.compile(r"sd-?v?1[-_.]?[45]|sd15|stable-diffusion-v1|sd1\b")))


def infer_info(folder: Path, raw: dict, d_in: int, default_family: str | None = None) -> SAEInfo | None:
    """Family and block of a foreign SAE from its cfg (hook_name, model_name) or folder names;
    None where they are not there (the caller then asks the user). `default_family` settles a
    block name two families share (SD1.x and SDXL both have mid_block.attentions.0)."""
    meta = raw.get("metadata") if isinstance(raw.get("metadata"), dict) else {}   # SAELens >= 6 keeps them there
    texts = [str(src[k]) for src in (raw, meta) for k in ("hook_name", "hook_point", "model_name") if src.get(k)]
    texts += [p.name for p in (folder, *folder.parents)][:3]
    block = next((m.group(1) for t in texts for m in [_BLOCK_IN_NAME.search(t)] if m), None)
    if block is None:
        return None
    joined = " ".join(texts).lower()
    family = next((name for name, pattern in _FAMILY_IN_NAME if pattern.search(joined)), None)
    if family is None:
        guessed = guess_family(block, d_in)
        family = guessed.name if guessed is not None else default_family
    if family not in FAMILIES or not FAMILIES[family].has_block_name(block):
        return None
    return SAEInfo(model_family=family, block_diffusers=block, cond="both")


def _build(cfg: SaeConfig, W_enc, latent_bias, W_dec, b_pre) -> TopKSAE:
    sae = TopKSAE(cfg)
    with torch.no_grad():
        sae.encoder_weight.copy_(W_enc)
        sae.latent_bias.copy_(latent_bias)
        sae.W_dec.copy_(W_dec)
        sae.b_pre.copy_(b_pre)
    return sae.eval().requires_grad_(False)


def load_sdlens(folder: Path, info: SAEInfo | None = None) -> SAEEntry:
    """relu(topk(enc(x - pre_bias) + latent_bias)); decode z @ decoder.weight.T + pre_bias."""
    cfg_path, weights = folder / "config.json", folder / "state_dict.pth"
    raw = read_json(cfg_path)
    n, d, k = (positive_int(cfg_path, raw, key) for key in ("n_dirs_local", "d_model", "k"))
    obj = torch_load_safe(weights)
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict):
        raise SAEFileError(weights, f"expected a dict with 'state_dict', got {type(obj).__name__}")
    require_keys(weights, state, ["encoder.weight", "decoder.weight", "pre_bias", "latent_bias"])
    W_enc = check_tensor(weights, "encoder.weight", state["encoder.weight"], (n, d))
    W_dec = check_tensor(weights, "decoder.weight", state["decoder.weight"], (d, n)).t()
    b_pre = check_tensor(weights, "pre_bias", state["pre_bias"], (d,))
    lat = check_tensor(weights, "latent_bias", state["latent_bias"], (n,))
    sae = _build(SaeConfig(d_in=d, n_latents=n, k=k, latent_bias=True), W_enc, lat, W_dec, b_pre)
    stats = {}
    for name, file in (("latent_mean", "mean.pt"), ("latent_std", "std.pt")):
        if (folder / file).exists():  # SDLens saves these on cuda:0; map_location handles it
            stats[name] = check_tensor(folder / file, name, torch_load_safe(folder / file), (n,))
    # SDLens's released U-Net SAEs and its code (sdxl-unbox) are SDXL / SDXL-Turbo only.
    info = info or infer_info(folder, raw, d, default_family="sdxl") or SAEInfo(model_family="unknown", cond="both")
    info.source_format = "sdlens"
    return SAEEntry(sae, info, **stats)


def load_sparsify(folder: Path, info: SAEInfo | None = None) -> SAEEntry:
    """topk(relu(encoder(x - b_dec))); decode sum top_acts * W_dec[top_indices] + b_dec."""
    cfg_path, weights = folder / "cfg.json", folder / "sae.safetensors"
    raw = read_json(cfg_path)
    for flag, why in (("skip_connection", "a skip connection"), ("transcode", "a transcoder")):
        if raw.get(flag):
            raise SAEFileError(cfg_path, f"{why} ({flag}=true) is not a plain TopK SAE; not supported")
    if raw.get("activation", "topk") != "topk":
        raise SAEFileError(cfg_path, f"activation {raw.get('activation')!r} is not supported (only 'topk')")
    d, k = positive_int(cfg_path, raw, "d_in"), positive_int(cfg_path, raw, "k")
    n = raw.get("num_latents") or d * positive_int(cfg_path, raw, "expansion_factor")
    _, t = read_safetensors(weights)
    require_keys(weights, t, ["encoder.weight", "encoder.bias", "W_dec", "b_dec"])
    W_enc = check_tensor(weights, "encoder.weight", t["encoder.weight"], (n, d))
    b_enc = check_tensor(weights, "encoder.bias", t["encoder.bias"], (n,))
    W_dec = check_tensor(weights, "W_dec", t["W_dec"], (n, d))
    b_dec = check_tensor(weights, "b_dec", t["b_dec"], (d,))
    sae = _build(SaeConfig(d_in=d, n_latents=n, k=k, latent_bias=True), W_enc, b_enc, W_dec, b_dec)
    info = info or SAEInfo(model_family="unknown", cond="both")
    info.source_format = "sparsify"
    return SAEEntry(sae, info)


def load_saelens(folder: Path, info: SAEInfo | None = None) -> SAEEntry:
    """topk(relu)((x - b_dec * apply_b_dec_to_input) @ W_enc + b_enc); decode z @ W_dec + b_dec."""
    cfg_path, weights = folder / "cfg.json", folder / "sae_weights.safetensors"
    raw = read_json(cfg_path)
    arch = raw.get("architecture") or raw.get("activation_fn_str") or raw.get("activation_fn")
    k = raw.get("k", (raw.get("activation_fn_kwargs") or {}).get("k"))
    if arch != "topk" or not isinstance(k, int) or k <= 0:
        raise SAEFileError(cfg_path, f"only TopK SAELens SAEs are supported; architecture={arch!r}, k={k!r}")
    norm = raw.get("normalize_activations") or "none"
    if norm != "none":
        raise SAEFileError(cfg_path, f"normalize_activations={norm!r} needs run-time statistics that are "
                                     f"not in the file; only 'none' is supported")
    d, n = positive_int(cfg_path, raw, "d_in"), positive_int(cfg_path, raw, "d_sae")
    _, t = read_safetensors(weights)
    require_keys(weights, t, ["W_enc", "b_enc", "W_dec", "b_dec"])
    W_enc = check_tensor(weights, "W_enc", t["W_enc"], (d, n)).t()
    b_enc = check_tensor(weights, "b_enc", t["b_enc"], (n,))
    W_dec = check_tensor(weights, "W_dec", t["W_dec"], (n, d))
    b_dec = check_tensor(weights, "b_dec", t["b_dec"], (d,))
    if raw.get("rescale_acts_by_decoder_norm"):
        # SAELens multiplies the pre-activations by n = ||W_dec[i]|| before TopK and divides the
        # code by n before decoding; scaling W_enc's columns and b_enc by n and W_dec's rows by 1/n
        # is the same function (TopK sees the same values), as SAELens's own fold_W_dec_norm does.
        n_dec = W_dec.double().norm(dim=1)
        if not bool((n_dec > 0).all()):
            raise SAEFileError(weights, "rescale_acts_by_decoder_norm=true with an all-zero decoder row")
        W_enc = (W_enc.double() * n_dec[:, None]).float()
        b_enc = (b_enc.double() * n_dec).float()
        W_dec = (W_dec.double() / n_dec[:, None]).float()
    if not raw.get("apply_b_dec_to_input", True):
        # x @ W_enc + b_enc == (x - b_dec) @ W_enc + (b_enc + b_dec @ W_enc): fold into the latent bias.
        b_enc = b_enc + W_enc.double().matmul(b_dec.double()).float()
    sae = _build(SaeConfig(d_in=d, n_latents=n, k=k, latent_bias=True), W_enc, b_enc, W_dec, b_dec)
    info = info or infer_info(folder, raw, d) or SAEInfo(model_family="unknown", cond="both")
    info.source_format = "saelens"
    return SAEEntry(sae, info)


FOREIGN_LOADERS = {  # marker files -> loader
    ("config.json", "state_dict.pth"): load_sdlens,
    ("cfg.json", "sae.safetensors"): load_sparsify,
    ("cfg.json", "sae_weights.safetensors"): load_saelens,
}


def detect_foreign(folder: Path):
    for markers, loader in FOREIGN_LOADERS.items():
        if all((folder / m).is_file() for m in markers):
            return loader
    return None
