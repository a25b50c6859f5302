"""Tiny random-weight Grounding DINO, SAM and CLIP of transformers' real classes, saved as local
folders exactly as users' weight folders are laid out (config.json, model.safetensors, processor
and tokenizer files). Tokenizers are built from vocabularies written here: nothing is downloaded."""
from __future__ import annotations

import json
import string
from pathlib import Path

import torch

WORDS = ["a", "the", "photo", "of", "and", "on", "under", "sky", "dog", "cat", "horse", "bird", "car",
         "tree", "house", "beach", "grass", "hot", "air", "balloon", "sea", "red", "hat"]


def bert_vocab() -> list[str]:
    """WordPiece vocabulary whose special ids match BERT's, which Grounding DINO hard-codes
    ([CLS] 101, [SEP] 102, '.' 1012, '?' 1029)."""
    toks = ["[PAD]"] + [f"[unused{i}]" for i in range(1, 100)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    toks += [f"[unused{i}]" for i in range(len(toks), 1012)] + ["."]
    toks += [f"[unused{i}]" for i in range(len(toks), 1029)] + ["?"]
    return toks + WORDS + [c for c in string.ascii_lowercase if c not in WORDS] + \
        ["##" + c for c in string.ascii_lowercase]


def grounding_dino(folder: Path, seed: int = 0) -> Path:
    from transformers import (
        BertConfig,
        BertTokenizerFast,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoProcessor,
        SwinConfig,
    )
    from transformers.models.grounding_dino import GroundingDinoImageProcessor
    folder.mkdir(parents=True, exist_ok=True)
    vocab = bert_vocab()
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast.from_pretrained(str(folder))
    torch.manual_seed(seed)
    config = GroundingDinoConfig(
        backbone_config=SwinConfig(embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=4,
                                   out_features=["stage2", "stage3", "stage4"], image_size=64),
        text_config=BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=32, max_position_embeddings=64),
        d_model=32, encoder_layers=1, decoder_layers=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
        encoder_attention_heads=2, decoder_attention_heads=2, num_queries=20, max_text_len=32)
    GroundingDinoForObjectDetection(config).eval().save_pretrained(folder)
    image_processor = GroundingDinoImageProcessor(size={"shortest_edge": 128, "longest_edge": 256})
    GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def sam(folder: Path, seed: int = 0) -> Path:
    from transformers import (
        SamConfig,
        SamMaskDecoderConfig,
        SamModel,
        SamProcessor,
        SamPromptEncoderConfig,
        SamVisionConfig,
    )
    from transformers.models.sam import SamImageProcessor
    torch.manual_seed(seed)
    config = SamConfig(
        vision_config=SamVisionConfig(hidden_size=32, output_channels=16, num_hidden_layers=2, num_attention_heads=2,
                                      image_size=64, patch_size=8, mlp_dim=64, global_attn_indexes=[1],
                                      window_size=4, num_pos_feats=8),
        prompt_encoder_config=SamPromptEncoderConfig(hidden_size=16, image_size=64, patch_size=8,
                                                     mask_input_channels=4),
        mask_decoder_config=SamMaskDecoderConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                                 mlp_dim=32, iou_head_hidden_dim=16))
    SamModel(config).eval().save_pretrained(folder)
    image_processor = SamImageProcessor(size={"longest_edge": 64}, pad_size={"height": 64, "width": 64},
                                        mask_size={"longest_edge": 32}, mask_pad_size={"height": 32, "width": 32})
    SamProcessor(image_processor=image_processor).save_pretrained(folder)
    return folder


def clip_bpe_files(folder: Path) -> None:
    """A byte-pair vocabulary in CLIP's format: every printable character, alone and word-final,
    plus left-to-right merges that make each word of WORDS one token."""
    chars = [c for c in string.printable if not c.isspace()]
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in chars:
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    merges = []
    for word in WORDS + ["tag", "object"]:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        left = pieces[0]
        for right in pieces[1:]:
            merge = f"{left} {right}"
            if merge not in merges:
                merges.append(merge)
            left += right
            vocab.setdefault(left, len(vocab))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")


def clip(folder: Path, seed: int = 0) -> Path:
    from transformers import (
        CLIPConfig,
        CLIPModel,
        CLIPProcessor,
        CLIPTextConfig,
        CLIPTokenizer,
        CLIPVisionConfig,
    )
    from transformers.models.clip import CLIPImageProcessor
    clip_bpe_files(folder)
    tokenizer = CLIPTokenizer.from_pretrained(str(folder))
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=77,
                                   bos_token_id=0, eos_token_id=1, pad_token_id=1),
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                       num_attention_heads=2, image_size=32, patch_size=8),
        projection_dim=16)
    CLIPModel(config).eval().save_pretrained(folder)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def segment_anything_modeling():
    """segment_anything.modeling (the original SAM classes), or None when not installed.

    Its package __init__ imports torchvision helpers (for the automatic mask generator and the
    predictor's PIL resize) that the model classes never use, so the package module is created
    without running it, and only the modeling subpackage is imported for real."""
    import importlib
    import importlib.util
    import sys
    spec = importlib.util.find_spec("segment_anything")
    if spec is None:
        return None
    if "segment_anything" not in sys.modules:
        sys.modules["segment_anything"] = importlib.util.module_from_spec(spec)
    return importlib.import_module("segment_anything.modeling")


def original_sam(seed: int = 0):
    """A tiny segment_anything Sam (the original class) with random weights, built as
    build_sam._build_sam builds the real ones, at a smaller size."""
    from functools import partial
    m = segment_anything_modeling()
    torch.manual_seed(seed)
    sam = m.Sam(
        image_encoder=m.ImageEncoderViT(depth=3, embed_dim=32, img_size=64, mlp_ratio=2, num_heads=2, patch_size=8,
                                        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), qkv_bias=True,
                                        use_rel_pos=True, global_attn_indexes=[1], window_size=4, out_chans=16),
        prompt_encoder=m.PromptEncoder(embed_dim=16, image_embedding_size=(8, 8), input_image_size=(64, 64),
                                       mask_in_chans=8),
        mask_decoder=m.MaskDecoder(num_multimask_outputs=3, transformer_dim=16, iou_head_depth=3,
                                   iou_head_hidden_dim=24,
                                   transformer=m.TwoWayTransformer(depth=2, embedding_dim=16, mlp_dim=32, num_heads=8)),
        pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375])
    # Default init leaves layer norms at identity and relative-position tables at zero, where a
    # mix-up of two of them could not show; perturb every parameter so each one matters.
    with torch.no_grad():
        for p in sam.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return sam.eval()
