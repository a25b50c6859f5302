"""SAM checkpoints in the original repository's format (sam_vit_h_4b8939.pth and friends, the
files ComfyUI users keep in models/sams) as transformers' `SamModel`.

The architecture is read off the tensors' shapes (embedding width, depth, patch and image size,
windowed vs global blocks, neck width, decoder depth); the two numbers shapes cannot tell, the
mask decoder's head count and the vision encoder's layer-norm eps, are the original's fixed
values (8 and 1e-6). Keys are renamed to transformers' layout and loaded strictly, so a file
that is not a SAM checkpoint fails with its name and the offending keys.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from ...sae_core.foreign_formats import torch_load_safe
from .segmenters import SegmenterError

DECODER_HEADS = 8   # fixed in segment_anything's build_sam (TwoWayTransformer(num_heads=8))

RENAMES = [   # (regex on the original key, replacement), applied in order
    (r"^image_encoder\.", "vision_encoder."),
    (r"^vision_encoder\.blocks\.", "vision_encoder.layers."),
    (r"^vision_encoder\.layers\.(\d+)\.norm(\d)\.", r"vision_encoder.layers.\1.layer_norm\2."),
    (r"^vision_encoder\.patch_embed\.proj\.", "vision_encoder.patch_embed.projection."),
    (r"^vision_encoder\.neck\.0\.", "vision_encoder.neck.conv1."),
    (r"^vision_encoder\.neck\.1\.", "vision_encoder.neck.layer_norm1."),
    (r"^vision_encoder\.neck\.2\.", "vision_encoder.neck.conv2."),
    (r"^vision_encoder\.neck\.3\.", "vision_encoder.neck.layer_norm2."),
    (r"^mask_decoder\.transformer\.layers\.(\d+)\.norm(\d)\.", r"mask_decoder.transformer.layers.\1.layer_norm\2."),
    (r"^mask_decoder\.transformer\.norm_final_attn\.", "mask_decoder.transformer.layer_norm_final_attn."),
    (r"^mask_decoder\.output_upscaling\.0\.", "mask_decoder.upscale_conv1."),
    (r"^mask_decoder\.output_upscaling\.1\.", "mask_decoder.upscale_layer_norm."),
    (r"^mask_decoder\.output_upscaling\.3\.", "mask_decoder.upscale_conv2."),
    (r"^prompt_encoder\.mask_downscaling\.0\.", "prompt_encoder.mask_embed.conv1."),
    (r"^prompt_encoder\.mask_downscaling\.1\.", "prompt_encoder.mask_embed.layer_norm1."),
    (r"^prompt_encoder\.mask_downscaling\.3\.", "prompt_encoder.mask_embed.conv2."),
    (r"^prompt_encoder\.mask_downscaling\.4\.", "prompt_encoder.mask_embed.layer_norm2."),
    (r"^prompt_encoder\.mask_downscaling\.6\.", "prompt_encoder.mask_embed.conv3."),
    (r"^prompt_encoder\.point_embeddings\.", "prompt_encoder.point_embed."),
]
MLPS = r"^(mask_decoder\.(?:output_hypernetworks_mlps\.\d+|iou_prediction_head))\.layers\.(\d+)\.(.*)$"
GAUSSIAN = "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        state = load_file(str(path))
    else:
        state = torch_load_safe(path)
    state = state.get("model", state) if isinstance(state, dict) else state
    if not isinstance(state, dict) or "image_encoder.patch_embed.proj.weight" not in state:
        raise SegmenterError(f"SAM checkpoint {path}: not an original-format SAM state dict "
                             f"(no image_encoder.patch_embed.proj.weight)")
    return state


def _count(state, pattern: str) -> int:
    return len({m.group(1) for k in state if (m := re.match(pattern, k))})


def sam_config(state: dict[str, torch.Tensor], path: Path):
    from transformers import (
        SamConfig,
        SamMaskDecoderConfig,
        SamPromptEncoderConfig,
        SamVisionConfig,
    )
    try:
        proj = state["image_encoder.patch_embed.proj.weight"]
        width, patch, grid = proj.shape[0], proj.shape[2], state["image_encoder.pos_embed"].shape[1]
        depth = _count(state, r"^image_encoder\.blocks\.(\d+)\.")
        rel = [state[f"image_encoder.blocks.{i}.attn.rel_pos_h"].shape for i in range(depth)]
        head_dim = rel[0][1]
        global_blocks = [i for i, s in enumerate(rel) if s[0] == 2 * grid - 1]
        windows = {(s[0] + 1) // 2 for i, s in enumerate(rel) if i not in global_blocks}
        out = state["image_encoder.neck.0.weight"].shape[0]
        vision = SamVisionConfig(
            hidden_size=width, output_channels=out, num_hidden_layers=depth, num_attention_heads=width // head_dim,
            image_size=grid * patch, patch_size=patch, global_attn_indexes=global_blocks,
            window_size=windows.pop() if windows else 14, num_pos_feats=state[GAUSSIAN].shape[1],
            mlp_dim=state["image_encoder.blocks.0.mlp.lin1.weight"].shape[0], layer_norm_eps=1e-6)
        prompt = SamPromptEncoderConfig(
            hidden_size=out, image_size=grid * patch, patch_size=patch,
            mask_input_channels=state["prompt_encoder.mask_downscaling.3.weight"].shape[0],
            num_point_embeddings=_count(state, r"^prompt_encoder\.point_embeddings\.(\d+)\."))
        decoder = SamMaskDecoderConfig(
            hidden_size=out, num_hidden_layers=_count(state, r"^mask_decoder\.transformer\.layers\.(\d+)\."),
            num_attention_heads=DECODER_HEADS,
            mlp_dim=state["mask_decoder.transformer.layers.0.mlp.lin1.weight"].shape[0],
            num_multimask_outputs=state["mask_decoder.mask_tokens.weight"].shape[0] - 1,
            iou_head_depth=_count(state, r"^mask_decoder\.iou_prediction_head\.layers\.(\d+)\."),
            iou_head_hidden_dim=state["mask_decoder.iou_prediction_head.layers.0.weight"].shape[0])
    except (KeyError, IndexError) as e:
        raise SegmenterError(f"SAM checkpoint {path}: missing tensor {e} needed to read its architecture") from e
    return SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)


def to_transformers_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        if key == GAUSSIAN:   # one matrix, used by the image and prompt positional encodings alike
            out["shared_image_embedding.positional_embedding"] = value
            out["prompt_encoder.shared_embedding.positional_embedding"] = value
            continue
        if key in ("pixel_mean", "pixel_std"):
            continue
        for pattern, repl in RENAMES:
            key = re.sub(pattern, repl, key)
        m = re.match(MLPS, key)
        if m:   # an MLP of n layers: proj_in, layers.0 .. layers.n-3, proj_out
            head, i, rest = m.group(1), int(m.group(2)), m.group(3)
            depth = _count(state, rf"^{re.escape(head)}\.layers\.(\d+)\.")   # these names are unrenamed
            key = (f"{head}.proj_in.{rest}" if i == 0 else f"{head}.proj_out.{rest}" if i == depth - 1
                   else f"{head}.layers.{i - 1}.{rest}")
        out[key] = value
    return out


def load_original_sam(path: Path):
    """(SamModel, SamProcessor) from an original-format checkpoint file."""
    from transformers import SamModel, SamProcessor
    from transformers.models.sam import SamImageProcessor
    state = read_state_dict(path)
    config = sam_config(state, path)
    model = SamModel(config)
    converted = to_transformers_keys(state)
    result = model.load_state_dict(converted, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith(("rotary_emb", "inv_freq"))]
    if missing or result.unexpected_keys:
        raise SegmenterError(f"SAM checkpoint {path}: does not match SAM's layout "
                             f"(missing {sorted(missing)[:3]}, unexpected {sorted(result.unexpected_keys)[:3]})")
    size = config.vision_config.image_size
    low = size // 4     # the mask decoder's output grid (4x the image embedding's)
    processor = SamProcessor(image_processor=SamImageProcessor(
        size={"longest_edge": size}, pad_size={"height": size, "width": size},
        mask_size={"longest_edge": low}, mask_pad_size={"height": low, "width": low}))
    return model.eval(), processor
