"""Tags, Grounding DINO + SAM adapters and the segment stage, on tiny random-weight models of
transformers' real classes (tests/tiny_hf_models.py) and on hand-computed cases."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sae_concepts.training.segment.segmenters import (
    Detection,
    SegmenterError,
    grounded_detections,
    tag_token_spans,
)
from sae_concepts.training.segment.tags import (
    TagVocabularyError,
    load_vocabulary,
    prompt_nouns,
    singular_forms,
)

transformers = pytest.importorskip("transformers", reason="NO TRANSFORMERS: segmenter adapter tests need it "
                                                          "(pip install -e '.[segment]')")
import tiny_hf_models

# ---------------------------------------------------------------- tags

def test_prompt_nouns_plurals_phrases_and_order():
    v = load_vocabulary()
    assert prompt_nouns("Two dogs and a hot air balloon over the sea, oil painting, red", v) == \
        ["dog", "hot air balloon", "sea"]
    assert prompt_nouns("puppies, wolves, children and a bus near the glasses", v) == \
        ["puppy", "wolf", "child", "bus", "glasses"]
    assert prompt_nouns("a hot dog next to a dog", v) == ["hot dog", "dog"]
    assert prompt_nouns("a beautiful, highly detailed, trending on artstation", v) == []
    assert singular_forms("boxes")[:3] == ["boxes", "box"] or "box" in singular_forms("boxes")


def test_custom_vocabulary_and_bad_files(tmp_path):
    f = tmp_path / "tags.txt"
    f.write_text("# my tags\nRed Panda\nteapot  # kitchen\n\n")
    v = load_vocabulary(str(f))
    assert v == {"red panda", "teapot"}
    assert prompt_nouns("two red pandas drinking from a teapot", v) == ["red panda", "teapot"]
    with pytest.raises(TagVocabularyError, match="not found"):
        load_vocabulary(str(tmp_path / "none.txt"))
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(TagVocabularyError, match="holds no tags"):
        load_vocabulary(str(tmp_path / "empty.txt"))


# ---------------------------------------------------------------- grounding from logits, by hand

def test_tag_spans_and_grounded_detections_by_hand():
    text = "dog. hot dog."
    # tokens: [CLS] dog . hot dog . [SEP]
    offsets = [(0, 0), (0, 3), (3, 4), (5, 8), (9, 12), (12, 13), (0, 0)]
    assert tag_token_spans(offsets, text, ["dog", "hot dog"]) == [[1], [3, 4]]
    probs = torch.zeros(4, 7)
    probs[0, 1] = 0.9                  # query 0: "dog"
    probs[1, 3], probs[1, 4] = 0.2, 0.6  # query 1: "hot dog" (its best token 0.6)
    probs[2, 1], probs[2, 4] = 0.3, 0.5  # query 2: both tags' tokens; "hot dog" scores higher
    probs[3, 2] = 0.99                 # query 3: only the '.' token fires: passes the box threshold, no tag
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.4], [0.1, 0.1, 0.4, 0.4], [0.5, 0.5, 1.0, 1.0], [0.5, 0.5, 0.1, 0.1]])
    got = grounded_detections(probs, boxes, [[1], [3, 4]], ["dog", "hot dog"], (100, 200), 0.35, 0.25)
    assert [(d.label, round(d.score, 3)) for d in got] == [("dog", 0.9), ("hot dog", 0.6), ("hot dog", 0.5)]
    assert got[0].box == pytest.approx((80.0, 30.0, 120.0, 70.0))
    assert got[1].box == pytest.approx((0.0, 0.0, 60.0, 30.0))       # clamped at the image's edge
    assert got[2].box == pytest.approx((0.0, 0.0, 200.0, 100.0))
    assert grounded_detections(probs, boxes, [[1], [3, 4]], ["dog", "hot dog"], (100, 200), 0.7, 0.25) == \
        [Detection("dog", got[0].box, pytest.approx(0.9))]


# ---------------------------------------------------------------- tiny real models

@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {"gd": tiny_hf_models.grounding_dino(root / "gd"), "sam": tiny_hf_models.sam(root / "sam"),
            "clip": tiny_hf_models.clip(root / "clip")}


def picture(h=48, w=80, seed=0):
    from PIL import Image
    return Image.fromarray((np.random.RandomState(seed).rand(h, w, 3) * 255).astype("uint8"))


def test_grounding_dino_adapter_against_transformers_postprocessing(models):
    """Same queries and boxes as transformers' own post-processing; labels from the tags' own token ids."""
    from sae_concepts.training.segment.segmenters import GroundingDino
    from transformers import AutoProcessor, GroundingDinoForObjectDetection
    image, tags = picture(), ["dog", "hot air balloon", "cat"]
    model = GroundingDinoForObjectDetection.from_pretrained(str(models["gd"])).eval()
    proc = AutoProcessor.from_pretrained(str(models["gd"]))
    enc = proc(images=image, text="dog. hot air balloon. cat.", return_tensors="pt")
    with torch.no_grad():
        out = model(**enc)
    probs = out.logits[0].sigmoid()
    threshold = float(probs.max(1).values.median())          # some queries pass, some do not
    ref = proc.post_process_grounded_object_detection(out, enc["input_ids"], threshold=threshold,
                                                       text_threshold=0.0, target_sizes=[(48, 80)])[0]
    det = GroundingDino(str(models["gd"]), "cpu", box_threshold=threshold, text_threshold=0.0).detect(image, tags)
    assert 0 < len(det) < probs.shape[0]
    ours = torch.tensor([d.box for d in det])
    theirs = ref["boxes"].clamp_min(0)
    theirs[:, 0::2], theirs[:, 1::2] = theirs[:, 0::2].clamp(max=80), theirs[:, 1::2].clamp(max=48)
    assert sorted(map(tuple, ours.round(decimals=3).tolist())) == sorted(map(tuple, theirs.round(decimals=3).tolist()))
    # Independent label reference: each tag's tokens located by its own token ids in input_ids.
    ids = enc["input_ids"][0].tolist()
    spans = {}
    for tag in tags:
        sub = proc.tokenizer(tag, add_special_tokens=False)["input_ids"]
        start = next(i for i in range(len(ids)) if ids[i:i + len(sub)] == sub and i not in
                     [j for s in spans.values() for j in s])
        spans[tag] = list(range(start, start + len(sub)))
    kept = (probs.max(1).values > threshold).nonzero().flatten().tolist()
    expect = [max(tags, key=lambda t: float(probs[q, spans[t]].max())) for q in kept]
    assert [d.label for d in det] == expect


def test_sam_adapter_against_manual_box_scaling_and_upsampling(models):
    """Boxes given in image pixels reach SAM scaled to its input; masks come back at the image's size."""
    from sae_concepts.training.segment.segmenters import Sam
    from transformers import AutoProcessor, SamModel
    image = picture()
    boxes = [(10.0, 5.0, 40.0, 30.0), (0.0, 0.0, 80.0, 48.0), (50.0, 10.0, 78.0, 46.0),
             (5.0, 20.0, 30.0, 47.0), (20.0, 2.0, 60.0, 20.0)]
    got = Sam(str(models["sam"]), "cpu", boxes_per_pass=2).masks(image, boxes)
    assert got.shape == (5, 48, 80) and got.dtype == torch.bool
    model = SamModel.from_pretrained(str(models["sam"])).eval()
    pixels = AutoProcessor.from_pretrained(str(models["sam"]))(images=image, return_tensors="pt")["pixel_values"]
    # Longest edge 80 -> the model's 64, so 48 -> round(38.4) = 38: x scales by 64/80, y by 38/48.
    scale = torch.tensor([64 / 80, 38 / 48, 64 / 80, 38 / 48], dtype=torch.float64)
    with torch.no_grad():
        prompt = (torch.tensor([boxes], dtype=torch.float64) * scale).float()
        low = model(pixel_values=pixels, input_boxes=prompt, multimask_output=False).pred_masks
    up = F.interpolate(low[0], size=(64, 64), mode="bilinear", align_corners=False)[:, :, :38, :64]
    ref = F.interpolate(up, size=(48, 80), mode="bilinear", align_corners=False)[:, 0] > 0
    assert torch.equal(got, ref)
    assert len({m.sum().item() for m in got}) > 1     # the boxes really steer the masks
    assert Sam(str(models["sam"]), "cpu").masks(image, []).shape == (0, 48, 80)


def test_clip_tagger_takes_top_k_above_the_floor(models):
    from sae_concepts.training.segment.clip_tagger import ClipTagger
    vocab = ["dog", "cat", "tree", "house", "hot air balloon", "sea"]
    tagger = ClipTagger(str(models["clip"]), vocab, top_k=3, min_score=-1.0, device="cpu")
    image = picture()
    scores = tagger.scores(image)
    assert scores.shape == (6,) and scores.abs().max() <= 1.0 + 1e-6
    order = [tagger.tags[i] for i in scores.argsort(descending=True).tolist()]
    assert tagger(image) == order[:3]
    tagger.min_score = float(scores.sort(descending=True).values[1])    # only the best one is above
    assert tagger(image) == order[:1]
    # Text embeddings are those of the prompt template, one unit row per sorted tag.
    from transformers import CLIPModel
    model = CLIPModel.from_pretrained(str(models["clip"])).eval()
    enc = tagger.processor(text=["a photo of a cat."], return_tensors="pt", padding=True)
    with torch.no_grad():
        ref = F.normalize(_tensor(model.get_text_features(**enc)), dim=-1)[0]
    assert torch.allclose(tagger.text[tagger.tags.index("cat")], ref, atol=1e-5)


def _tensor(x):
    return x if isinstance(x, torch.Tensor) else x.pooler_output


def test_bad_weight_folders_give_clear_errors(tmp_path, models):
    from sae_concepts.training.segment.segmenters import GroundingDino, Sam
    with pytest.raises(SegmenterError, match="config.json"):
        GroundingDino(str(tmp_path / "missing"))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(SegmenterError, match=str(broken)):
        Sam(str(broken))
    with pytest.raises(SegmenterError, match="model_type 'grounding-dino', expected 'sam'"):
        Sam(str(models["gd"]))                       # a Grounding DINO folder given as SAM
    # Right model type, but weights missing: transformers would fill them randomly and only warn.
    import shutil

    from safetensors.torch import load_file, save_file
    partial = tmp_path / "partial"
    shutil.copytree(models["sam"], partial)
    weights = load_file(str(partial / "model.safetensors"))
    save_file({k: v for k, v in weights.items() if not k.startswith("mask_decoder.")}, str(partial / "model.safetensors"),
              metadata={"format": "pt"})
    with pytest.raises(SegmenterError, match="missing or of the wrong shape.*mask_decoder"):
        Sam(str(partial))


# ---------------------------------------------------------------- the segment stage and dictionary

@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    from sae_concepts.sae_core import TrainConfig
    from sae_concepts.training.demo.demo import write_split
    from sae_concepts.training.train.train import TrainCommandConfig, train_saes
    root = tmp_path_factory.mktemp("seg")
    write_split(root, "heldout", 4, 500, seed=5, with_pictures=True)
    sae = root / "set.safetensors"
    train_saes(TrainCommandConfig(shards=str(root / "heldout"), out=str(sae), only="middle_block.1,t=1",
                                  expansion_factor=2, k=1, batch_size=256, epochs=1),
               TrainConfig(lr=3e-3, checkpoint_every=1000), progress=False)
    return root / "heldout", sae


def seg_config(models, **kw):
    from sae_concepts.training.segment.segment import SegmentConfig
    return SegmentConfig(grounding_dino=str(models["gd"]), sam=str(models["sam"]), device="cpu",
                         box_threshold=0.0, text_threshold=0.0, **kw)


def test_segment_stage_writes_masks_resumes_and_guards_folders(tmp_path, models, collection):
    from sae_concepts.training.storage.masks import image_masks
    from sae_concepts.training.segment.segment import DONE_FILE, RUN_FILE, segment_images
    shards, _ = collection
    masks = segment_images(str(shards), str(tmp_path / "m"), seg_config(models), progress=False)
    records = {int(p.parent.name): json.loads(p.read_text()) for p in masks.glob(f"*/{DONE_FILE}")}
    assert sorted(records) == [500, 501, 502, 503]
    for pid, rec in records.items():
        assert rec["tags"] == prompt_nouns(rec["prompt"]) and rec["tags"]
        assert set(rec["labels"]) <= set(rec["tags"]) and rec["labels"]     # thresholds 0: every tag boxes
        got = image_masks(masks, pid)
        assert sorted(got) == sorted(rec["labels"])
        from PIL import Image
        size = Image.open(shards / "images" / f"{pid:06d}.png").size[::-1]
        assert all(tuple(m.shape) == size for m in got.values())             # masks at the image's size
    # Resume: only the image without its done file is redone, and the same way.
    first = {p: p.stat().st_mtime_ns for p in masks.glob("*/*.png")}
    victim = masks / "000502"
    before = {p.name: p.read_bytes() for p in victim.glob("*.png")}
    (victim / DONE_FILE).unlink()
    (victim / "leftover_from_a_kill.png").write_bytes(b"partial")
    segment_images(str(shards), str(masks), seg_config(models), progress=False)
    assert {p.name: p.read_bytes() for p in victim.glob("*.png")} == before
    assert all(p.stat().st_mtime_ns == t for p, t in first.items() if p.parent != victim)
    # Other settings into the same folder, or into a folder of the user's own masks: refused.
    with pytest.raises(SegmenterError, match="other segmenter settings"):
        segment_images(str(shards), str(masks), seg_config(models, tagger="clip", clip=str(models["clip"])),
                       progress=False)
    with pytest.raises(SegmenterError, match="not made by the segmenter"):
        segment_images(str(shards), str(shards / "masks"), seg_config(models), progress=False)
    assert len(list((shards / "masks").glob("*/segment.json"))) == 0
    # A run that failed before segmenting anything (a wrong model path) does not lock its folder.
    typo = tmp_path / "typo"
    with pytest.raises(SegmenterError):
        segment_images(str(shards), str(typo), seg_config({**models, "sam": str(tmp_path / "no_sam")}), progress=False)
    assert (typo / RUN_FILE).is_file()
    assert segment_images(str(shards), str(typo), seg_config(models), progress=False) == typo
    assert len(list(typo.glob(f"*/{DONE_FILE}"))) == 4


def test_clip_tagger_drives_the_segment_stage(tmp_path, models, collection):
    from sae_concepts.training.segment.segment import DONE_FILE, segment_images
    shards, _ = collection
    vocab = tmp_path / "v.txt"
    vocab.write_text("dog\ncat\ntree\nhouse\n")
    masks = segment_images(str(shards), str(tmp_path / "m"),
                           seg_config(models, tagger="clip", clip=str(models["clip"]), tag_vocabulary=str(vocab),
                                      clip_top_k=2, clip_min_score=-1.0), progress=False)
    for p in masks.glob(f"*/{DONE_FILE}"):
        rec = json.loads(p.read_text())
        assert len(rec["tags"]) == 2 and set(rec["tags"]) <= {"dog", "cat", "tree", "house"}


def test_dictionary_cli_runs_the_segmenter_first(tmp_path, models, collection, capsys):
    from sae_concepts.training import cli
    shards, sae = collection
    out = tmp_path / "dict.json"
    args = ["dictionary", "--quiet", "--shards", str(shards), "--sae", str(sae), "--out", str(out),
            "--masks", str(tmp_path / "masks"), "--grounding-dino", str(models["gd"]), "--sam", str(models["sam"]),
            "--box-threshold", "0", "--text-threshold", "0", "--device", "cpu",
            # random segmenters draw arbitrary masks: a low IoU bar keeps the dictionary non-empty
            # (an empty one is refused, as it should be)
            "--iou", "0.01"]
    assert cli.main(args) == 0, capsys.readouterr().err
    assert out.exists() and len(list((tmp_path / "masks").glob("*/segment.json"))) == 4
    assert cli.main(["segment", "--quiet", "--shards", str(shards), "--masks", str(tmp_path / "masks"),
                     "--grounding-dino", str(models["gd"]), "--sam", str(models["sam"]),
                     "--box-threshold", "0", "--text-threshold", "0"]) == 0     # all done already: resumes, no work
    assert "4 images" in capsys.readouterr().out
    assert cli.main(["segment", "--shards", str(shards), "--grounding-dino", str(models["gd"])]) == 2
    assert "needs both" in capsys.readouterr().err
    assert cli.main(["dictionary", "--shards", str(shards), "--sae", str(sae), "--masks", str(shards / "masks"),
                     "--out", str(tmp_path / "d4.json"), "--tagger", "clip"]) == 2
    assert "only apply when" in capsys.readouterr().err and not (tmp_path / "d4.json").exists()
    assert cli.main(["segment", "--shards", str(shards), "--masks", str(tmp_path / "m3"),
                     "--grounding-dino", str(tmp_path / "nope"), "--sam", str(models["sam"])]) == 2
    assert "nope" in capsys.readouterr().err
    assert os.environ.get("HF_HUB_OFFLINE") == "1"


def test_original_sam_checkpoint_converts_to_the_same_model(tmp_path):
    """An original-format SAM file (segment_anything's own classes, random weights) loads as a
    SamModel that computes the same image embeddings and low-res masks."""
    if tiny_hf_models.segment_anything_modeling() is None:
        pytest.skip("NO SEGMENT-ANYTHING: pip install segment-anything==1.0 to test original SAM files")
    from sae_concepts.training.segment.segmenters import Sam
    original = tiny_hf_models.original_sam()
    path = tmp_path / "sam_vit_tiny.pth"
    torch.save(original.state_dict(), path)
    adapter = Sam(str(path), "cpu")
    vc = adapter.model.config.vision_config
    assert (vc.hidden_size, vc.num_hidden_layers, vc.num_attention_heads, vc.global_attn_indexes, vc.window_size,
            vc.image_size, vc.patch_size) == (32, 3, 2, [1], 4, 64, 8)
    image = picture()
    boxes = [(10.0, 5.0, 40.0, 30.0), (50.0, 10.0, 78.0, 46.0)]
    enc = adapter.processor(images=image, input_boxes=[[list(b) for b in boxes]], return_tensors="pt")
    with torch.no_grad():
        ours_emb = adapter.model.get_image_embeddings(enc["pixel_values"])
        ref_emb = original.image_encoder(enc["pixel_values"])
        assert torch.allclose(ours_emb, ref_emb, atol=1e-5)
        sparse, dense = original.prompt_encoder(points=None, boxes=enc["input_boxes"][0].float(), masks=None)
        ref_low, _ = original.mask_decoder(image_embeddings=ref_emb, image_pe=original.prompt_encoder.get_dense_pe(),
                                           sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                           multimask_output=False)
        ours_low = adapter.model(image_embeddings=ours_emb, input_boxes=enc["input_boxes"].float(),
                                 multimask_output=False).pred_masks[0]
    assert ref_low.abs().max() > 1e-3
    assert torch.allclose(ours_low, ref_low, atol=1e-4 * float(ref_low.abs().max()) + 1e-6)
    assert adapter.masks(image, boxes).shape == (2, 48, 80)
    # Not a SAM file: refused with its name.
    other = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(2)}, other)
    with pytest.raises(SegmenterError, match="other.pth.*not an original-format SAM"):
        Sam(str(other))
