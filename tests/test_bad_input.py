"""Bad input is refused with a clear error (issue 13): every stage checks what it is given, names the
file / option, what it expected and what it found, and never exits 0 with a wrong or NaN result."""
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from safetensors import safe_open

from sae_concepts.sae_core import SAEEntry, SAEInfo, SaeConfig, TopKSAE, load_sae, save_sae_set
from sae_concepts.sae_core.errors import SAEConceptsError, SAEFileError


def small_set(path, seed=0):
    g = torch.Generator().manual_seed(seed)
    sae = TopKSAE(SaeConfig(d_in=8, expansion_factor=2, k=2))
    sae.reset_parameters(g)
    save_sae_set(path, [SAEEntry(sae, SAEInfo(block="middle_block.1", t=1.0, cond="cond"))])
    return path


def rewrite_tensor(path, name, value):
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    tensors[name] = value
    save_file(tensors, str(path), metadata=meta)


# ---- 7. SAE files: input scale and weights must be usable ----------------------------------------
@pytest.mark.parametrize("scale", [0.0, -2.0, math.inf, math.nan])
def test_sae_file_with_unusable_input_scale_is_refused_naming_the_tensor(tmp_path, scale):
    path = small_set(tmp_path / "set.safetensors")
    rewrite_tensor(path, "sae.0.input_scale", torch.tensor(scale))
    with pytest.raises(SAEFileError, match=r"set\.safetensors.*'sae\.0\.input_scale'"):
        load_sae(path)


def test_sae_file_with_a_non_finite_weight_is_refused_naming_the_tensor(tmp_path):
    path = small_set(tmp_path / "set.safetensors")
    w = load_file(str(path))["sae.0.W_dec"]
    w[3, 1] = math.inf
    rewrite_tensor(path, "sae.0.W_dec", w)
    with pytest.raises(SAEFileError, match=r"'sae\.0\.W_dec' holds 1 NaN/Inf"):
        load_sae(path)


# ---- one base class; the CLI prints every user-facing error the same way ---------------------------
def test_every_user_facing_error_class_derives_from_the_base():
    from sae_concepts.sae_core import TrainingError
    from sae_concepts.sae_core.errors import ConfigError, DictionaryMismatchError, OutputError
    from sae_concepts.training.collect.collect import CollectError
    from sae_concepts.training.dictionary.word_vectors import WordVectorError
    from sae_concepts.training.segment.segmenters import SegmenterError
    from sae_concepts.training.segment.tags import TagVocabularyError
    from sae_concepts.training.storage.masks import MaskError
    from sae_concepts.training.storage.prompts import PromptFileError
    from sae_concepts.training.storage.shards import ShardError
    for cls in (SAEFileError, TrainingError, ConfigError, DictionaryMismatchError, OutputError, CollectError,
                WordVectorError, SegmenterError, TagVocabularyError, MaskError, PromptFileError, ShardError):
        assert issubclass(cls, SAEConceptsError), cls


def run_cli(capsys, *argv):
    from sae_concepts.training.cli import main
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_prints_a_user_facing_error_as_one_line_with_status_2(tmp_path, capsys):
    path = small_set(tmp_path / "set.safetensors")
    rewrite_tensor(path, "sae.0.input_scale", torch.tensor(0.0))
    rc, _, err = run_cli(capsys, "info", path)
    assert rc == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("sae-concepts info: error: ") and "sae.0.input_scale" in err


# ---- 4 + 5. shards: a checksum per shard; damaged or missing shards are named and redone -------------
def planted_shards(root, n_shards=4, per_shard=256, d=8, seed=0):
    from sae_concepts.sae_core.synthetic import PlantedDictionary
    from sae_concepts.training.storage.shards import ShardWriter, activation_key
    key = activation_key("middle_block.1", 1.0, "cond")
    planted = PlantedDictionary.random(d, 16, 2, seed=seed)
    w = ShardWriter(root, rank=0, run_config={"model_family": "sd1", "d": d})
    g = torch.Generator().manual_seed(seed + 1)
    for i in range(n_shards):
        if i in w.done:
            continue
        x, _ = planted.sample(per_shard, torch.Generator().manual_seed(seed * 1000 + i))
        w.write(i, {f"{key}/acts": x.half(), f"{key}/prompt": torch.full((per_shard,), i, dtype=torch.int64),
                    f"{key}/pos": torch.arange(per_shard, dtype=torch.int32)}, {"prompt_ids": [i]})
    return w


def corrupt_same_size(path, value: bytes = b"\x00\x3c"):
    """Overwrite two bytes near the end (inside the acts data) without changing the file's size."""
    data = bytearray(path.read_bytes())
    at = len(data) - 4000
    data[at:at + len(value)] = value
    path.write_bytes(bytes(data))


def train_cmd(tmp_path, **over):
    from sae_concepts.sae_core import TrainConfig
    from sae_concepts.training.train.train import TrainCommandConfig
    cmd = dict(shards=str(tmp_path / "acts"), out=str(tmp_path / "set.safetensors"), expansion_factor=2, k=2,
               batch_size=128, shuffle_window=512, epochs=1)
    cmd.update(over)
    return TrainCommandConfig(**cmd), TrainConfig(lr=1e-3, checkpoint_every=0)


@pytest.mark.parametrize("value", [b"\xff\xff", b"\x00\x3c"], ids=["nan", "finite"])
def test_train_names_a_shard_corrupted_without_changing_size(tmp_path, value):
    from sae_concepts.training.storage.shards import ShardError
    from sae_concepts.training.train.train import train_saes
    planted_shards(tmp_path / "acts")
    corrupt_same_size(tmp_path / "acts" / "shard_r000_00002.safetensors", value)
    with pytest.raises(ShardError, match=r"shard_r000_00002\.safetensors is corrupted.*SHA-256.*delete it and "
                                         r"rerun collect"):
        train_saes(*train_cmd(tmp_path), progress=False)
    assert not (tmp_path / "set.safetensors").exists()


def test_deleting_a_broken_shard_and_rerunning_the_writer_redoes_exactly_the_missing_and_damaged(tmp_path):
    from sae_concepts.training.storage.shards import ShardSet
    root = tmp_path / "acts"
    planted_shards(root)
    before = {s["file"]: s["sha256"] for s in ShardSet.open(root).shards}
    untouched = root / "shard_r000_00000.safetensors"
    stamp = untouched.stat().st_mtime_ns
    (root / "shard_r000_00001.safetensors").unlink()                        # the advice: delete it
    corrupt_same_size(root / "shard_r000_00003.safetensors")                 # or just damaged in place
    w = planted_shards(root)                                                 # ... and rerun
    assert sorted(w.repaired) == ["shard_r000_00001.safetensors (missing)",
                                  "shard_r000_00003.safetensors (damaged: its SHA-256 differs from the one "
                                  f"recorded when it was written ({before['shard_r000_00003.safetensors'][:12]}...))"]
    after = ShardSet.open(root)
    assert {s["file"]: s["sha256"] for s in after.shards} == before       # redone bit for bit
    assert untouched.stat().st_mtime_ns == stamp                              # the intact ones were not rewritten
    after.verify_all()


# ---- 3. train into an existing --out: resume the same run, refuse another -----------------------------
def test_train_refuses_an_out_of_another_run_and_says_what_differs(tmp_path, capsys):
    from sae_concepts.training.train.train import train_saes
    planted_shards(tmp_path / "acts")
    cmd, train = train_cmd(tmp_path)
    first = train_saes(cmd, train, progress=False)
    # checkpoints live in the run folder beside the shards, not beside the SAE set (e.g. models/sae)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["acts", "set.safetensors"]
    assert (tmp_path / "acts" / "train_runs" / "set" / "run.json").exists()
    for change, flag in (({"epochs": 2}, "--epochs: 1 then, 2 now"), ({"batch_size": 64}, "--batch-size"),
                         ({"k": 3}, "--k: 2 then, 3 now"), ({"expansion_factor": 4}, "--expansion-factor")):
        with pytest.raises(SAEConceptsError, match=f"{flag}.*to start over, delete .*train_runs/set and "
                                                   f".*set.safetensors"):
            train_saes(*train_cmd(tmp_path, **change), progress=False)
    # other shards (one more shard written into the collection since)
    planted_shards(tmp_path / "acts", n_shards=5)
    with pytest.raises(SAEConceptsError, match="the shards in .*acts changed since"):
        train_saes(cmd, train, progress=False)
    # an --out that exists with no run recorded for it is not overwritten
    other = tmp_path / "other.safetensors"
    other.write_bytes(b"precious")
    with pytest.raises(SAEConceptsError, match="other.safetensors already exists"):
        train_saes(*train_cmd(tmp_path, out=str(other)), progress=False)
    assert other.read_bytes() == b"precious"
    assert torch.equal(load_sae(tmp_path / "set.safetensors").entries[0].sae.W_dec, first[0].sae.W_dec)


def test_train_resume_says_from_which_step(tmp_path, capsys):
    from sae_concepts.sae_core import TrainConfig
    from sae_concepts.training.train.train import train_saes
    planted_shards(tmp_path / "acts")
    cmd, _ = train_cmd(tmp_path, epochs=2)
    # a run stopped after 5 of its 16 steps (max_steps is part of the run, so it is the same run
    # resumed only when the checkpoint says so: here the checkpoint is written every 5 steps and the
    # process is "killed" by an exception in the data after step 6)
    import sae_concepts.training.train.train as train_module
    real = train_module.stream_batches

    def dying(*a, **kw):
        for i, b in enumerate(real(*a, **kw)):
            if i == 6:
                raise KeyboardInterrupt
            yield b
    train_module.stream_batches = dying
    try:
        with pytest.raises(KeyboardInterrupt):
            train_saes(cmd, TrainConfig(lr=1e-3, checkpoint_every=5), progress=False)
    finally:
        train_module.stream_batches = real
    capsys.readouterr()
    train_saes(cmd, TrainConfig(lr=1e-3, checkpoint_every=5), progress=False)
    assert "resuming from step 5 of 16" in capsys.readouterr().out
    train_saes(cmd, TrainConfig(lr=1e-3, checkpoint_every=5), progress=False)
    assert "already trained" in capsys.readouterr().out


# ---- 6. an unwritable output is found before the work ----------------------------------------------------
def test_train_refuses_an_unwritable_out_before_training(tmp_path):
    from sae_concepts.training.train.train import train_saes
    planted_shards(tmp_path / "acts")
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(SAEConceptsError, match=r"--out: .*a_file.* is not writable"):
        train_saes(*train_cmd(tmp_path, out=str(blocker / "set.safetensors")), progress=False)
    assert not (tmp_path / "acts" / "train_runs").exists() or not list((tmp_path / "acts" / "train_runs").rglob("*.ckpt"))


# ---- a tiny world with known answers: shards, images, masks, a matching SAE and word vectors ------------
GRID, IMG, D = 4, 32, 8
KEY_BLOCK = "middle_block.1"


def save_png_image(path, arr):
    from PIL import Image
    import numpy as np
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.asarray(arr) * 255).astype("uint8")).save(path)


def tiny_world(root, n_images=6, seed=0):
    """Each image: a 'dog' in one 2x2 quadrant of a 4x4 grid, 'sky' elsewhere; the activation at a
    position is its label's direction plus a little noise. Returns the collection folder."""
    import torch.nn.functional as F
    from sae_concepts.training.storage.masks import save_mask
    from sae_concepts.training.storage.shards import ShardWriter, activation_key
    key = activation_key(KEY_BLOCK, 1.0, "cond")
    g = torch.Generator().manual_seed(seed)
    w = ShardWriter(root, run_config={"model_family": "sd1", "d": D})
    acts, prompts = [], []
    for pid in range(n_images):
        q = pid % 4
        grid = torch.zeros(GRID, GRID, dtype=torch.bool)
        grid[2 * (q // 2):2 * (q // 2) + 2, 2 * (q % 2):2 * (q % 2) + 2] = True
        labels = grid.flatten().long()                                    # 1 = dog, 0 = sky
        acts.append(3 * F.one_hot(1 - labels, D).float() + 0.05 * torch.randn(GRID * GRID, D, generator=g))
        prompts.append(torch.full((GRID * GRID,), pid, dtype=torch.int64))
        up = F.interpolate(grid[None, None].float(), size=(IMG, IMG), mode="nearest")[0, 0] > 0.5
        save_mask(root / "masks", pid, "dog", up)
        save_mask(root / "masks", pid, "sky", ~up)
        save_png_image(root / "images" / f"{pid:06d}.png", up[..., None].float().expand(IMG, IMG, 3))
    w.write(0, {f"{key}/acts": torch.cat(acts).half(), f"{key}/prompt": torch.cat(prompts),
                f"{key}/pos": torch.arange(GRID * GRID, dtype=torch.int32).repeat(n_images)},
            {"prompt_ids": list(range(n_images)), "grids": {KEY_BLOCK: [GRID, GRID]}})
    (root.parent / "vectors.txt").write_text("dog 1 0 0\nsky 0 1 0\ncat 0.9 0.2 0\n")
    return root


def matching_set(path, seed=0):
    """An SAE whose concepts 0 and 1 are the world's "dog" and "sky" directions (k = 1)."""
    g = torch.Generator().manual_seed(seed)
    sae = TopKSAE(SaeConfig(d_in=D, n_latents=16, k=1))
    with torch.no_grad():
        w = 0.1 * torch.randn(16, D, generator=g)
        w[0], w[1] = torch.eye(D)[0], torch.eye(D)[1]
        sae.encoder_weight.copy_(w)
        sae.W_dec.copy_(w / w.norm(dim=1, keepdim=True))
    save_sae_set(path, [SAEEntry(sae, SAEInfo(block=KEY_BLOCK, t=1.0, cond="cond"))])
    return path


@pytest.fixture
def world(tmp_path):
    from sae_concepts.training.dictionary.dictionary import DictionaryConfig, build_dictionary
    acts = tiny_world(tmp_path / "eval")
    sae = matching_set(tmp_path / "set.safetensors")
    build_dictionary(DictionaryConfig(shards=str(acts), sae=str(sae), masks=str(acts / "masks"),
                                      out=str(tmp_path / "dict.json"), word_vectors=str(tmp_path / "vectors.txt"),
                                      mask_size=IMG), progress=False)
    return tmp_path


def evaluate_cfg(world, **over):
    from sae_concepts.training.evaluate.evaluate import EvaluateConfig
    cfg = dict(shards=str(world / "eval"), sae=str(world / "set.safetensors"), dictionary=str(world / "dict.json"),
               masks=str(world / "eval" / "masks"), out=str(world / "metrics.json"),
               word_vectors=str(world / "vectors.txt"), mask_size=IMG)
    cfg.update(over)
    return EvaluateConfig(**cfg)


def strict_json(path):
    import json

    def refuse(name):
        raise AssertionError(f"{path} holds {name}")
    return json.loads(path.read_text(), parse_constant=refuse)


def test_the_tiny_world_gives_a_perfect_score(world):
    from sae_concepts.sae_core.concept_dictionary import ConceptDictionary
    from sae_concepts.training.evaluate.evaluate import evaluate
    d = ConceptDictionary.load(world / "dict.json").entries[0]
    assert d.labels(0) == ["dog"] and d.labels(1) == ["sky"]
    rows = evaluate(evaluate_cfg(world))
    assert rows[0]["composition_iou"] > 0.8 and rows[0]["objects"] == 12   # bilinear edges cost a little
    # exact labels agree here (each concept has one label); "everywhere" is the masks' mean area share
    from sae_concepts.training.storage.masks import image_masks
    areas = [m.float().mean().item() for pid in range(6)
             for m in image_masks(world / "eval" / "masks", pid, IMG).values()]
    assert rows[0]["composition_iou_label"] > 0.8
    assert rows[0]["composition_iou_everywhere"] == pytest.approx(sum(areas) / len(areas))
    assert rows[0]["composition_iou"] > rows[0]["composition_iou_everywhere"] + 0.3   # masks are half the image
    assert strict_json(world / "metrics.json")["masks"]["objects_scored_per_label"] == {"dog": 6, "sky": 6}


# ---- 1. evaluate --masks: nothing matching is refused, partial matches are counted, never NaN ----------
@pytest.mark.parametrize("layout", ["missing", "empty", "by_label", "other_ids"])
def test_evaluate_refuses_masks_that_match_no_image(world, layout):
    from sae_concepts.training.evaluate.evaluate import evaluate
    masks = world / "masks_wrong"
    if layout == "empty":
        masks.mkdir()
    elif layout == "by_label":          # <masks>/<label>/<id>.png: a plausible wrong layout
        (masks / "dog").mkdir(parents=True)
        (world / "eval" / "masks" / "000000" / "dog.png").rename(masks / "dog" / "000000.png")
    elif layout == "other_ids":         # masks of other images
        masks.mkdir()
        (world / "eval" / "masks" / "000001").rename(masks / "000099")
    with pytest.raises(SAEConceptsError, match=r"--masks .*masks_wrong.*expected .*<masks>/<image id, 6 digits>/"
                                               r"<label>\.png"):
        evaluate(evaluate_cfg(world, masks=str(masks)))
    assert not (world / "metrics.json").exists()


def test_evaluate_counts_partial_mask_coverage_per_label_and_writes_no_nan(world, capsys):
    import shutil
    for pid in (0, 1, 2, 3):
        shutil.rmtree(world / "eval" / "masks" / f"{pid:06d}")
    (world / "eval" / "masks" / "000004" / "sky.png").unlink()
    rc, out, err = run_cli(capsys, "evaluate", "--shards", world / "eval", "--sae", world / "set.safetensors",
                           "--dictionary", world / "dict.json", "--masks", world / "eval" / "masks",
                           "--out", world / "metrics.json", "--word-vectors", world / "vectors.txt",
                           "--mask-size", IMG)
    assert rc == 0, err
    assert "masks: 2 of 6 evaluation images have masks" in out and "dog 2, sky 1" in out
    metrics = strict_json(world / "metrics.json")
    assert metrics["masks"]["images_with_masks"] == 2 and metrics["masks"]["images"] == 6
    assert metrics["masks"]["masks_per_label"] == {"dog": 2, "sky": 1}
    assert metrics["rows"][0]["objects_per_label"] == {"dog": 2, "sky": 1}


def test_undefined_metrics_are_null_not_nan(world, capsys):
    """One labelled concept only: inter-concept similarity is undefined; it is written as null."""
    import json
    d = json.loads((world / "dict.json").read_text())
    del d["dictionaries"][0]["concepts"]["0"]
    (world / "dict.json").write_text(json.dumps(d))
    rc, out, _ = run_cli(capsys, "evaluate", "--shards", world / "eval", "--sae", world / "set.safetensors",
                         "--dictionary", world / "dict.json", "--out", world / "metrics.json",
                         "--word-vectors", world / "vectors.txt")
    assert rc == 0
    row = strict_json(world / "metrics.json")["rows"][0]
    assert row["inter_concept_similarity"] is None and row["labelled_concepts"] == 1
    assert "nan" not in out.lower()


def test_masks_of_another_size_than_their_image_are_refused(world):
    from sae_concepts.training.evaluate.evaluate import evaluate
    from sae_concepts.training.storage.masks import save_mask
    save_mask(world / "eval" / "masks", 3, "dog", torch.ones(16, 16, dtype=torch.bool))
    with pytest.raises(SAEConceptsError, match=r"000003/dog\.png is 16x16 pixels, but image 000003 is 32x32"):
        evaluate(evaluate_cfg(world))


# ---- 2. a dictionary belongs to the SAE set it was built from ----------------------------------------
def test_a_dictionary_from_another_sae_set_is_refused_naming_both_files(world, capsys):
    from sae_concepts.training.evaluate.evaluate import evaluate
    from sae_concepts.training.report.report import build_report
    other = matching_set(world / "retrained.safetensors", seed=1)     # same blocks, other weights
    with pytest.raises(SAEConceptsError, match=r"dict\.json was built from the SAE set set\.safetensors "
                                               r"\(fingerprint \w+\), not from .*retrained\.safetensors"):
        evaluate(evaluate_cfg(world, sae=str(other)))
    evaluate(evaluate_cfg(world))                                      # the right pair works
    with pytest.raises(SAEConceptsError, match="retrained.safetensors"):
        build_report(world / "report", other, world / "dict.json", world / "metrics.json", world / "eval")
    # a copy of the right set under another name is the same set: the fingerprint is of the weights
    import shutil
    shutil.copy(world / "set.safetensors", world / "renamed.safetensors")
    evaluate(evaluate_cfg(world, sae=str(world / "renamed.safetensors")))
    rc, _, err = run_cli(capsys, "evaluate", "--shards", world / "eval", "--sae", other, "--dictionary",
                         world / "dict.json", "--out", world / "m2.json", "--word-vectors", world / "vectors.txt")
    assert rc == 2 and err.count("\n") == 1 and "retrained.safetensors" in err


def test_a_dictionary_missing_an_sae_leaves_it_unlabelled_instead_of_borrowing_another_ts_ids(world):
    """A dictionary built before its set was complete covers some SAEs only: another t's concept ids
    name other concepts, so the uncovered SAE gets none (a v1 dictionary, unchecked, still falls back)."""
    from sae_concepts.sae_core.concept_dictionary import ConceptDictionary
    from sae_concepts.sae_core import load_sae
    d = ConceptDictionary.load(world / "dict.json")
    assert d.for_sae(KEY_BLOCK, 1.0, "cond").lookup("dog") == [0]
    assert d.for_sae(KEY_BLOCK, 0.5, "cond") is None
    d.built_from = {}
    assert d.for_sae(KEY_BLOCK, 0.5, "cond").lookup("dog") == [0]
    # concept ids beyond the SAE's latents: the file was edited
    bad = ConceptDictionary.load(world / "dict.json")
    bad.entries[0].concepts[99] = {"labels": ["dog"], "counts": {"dog": 1}}
    with pytest.raises(SAEConceptsError, match=r"concept ids beyond the SAE's latents: .*concept 99 of 16"):
        bad.check_built_from(load_sae(world / "set.safetensors"))


def test_report_refuses_metrics_of_another_sae_set(world):
    import json
    from sae_concepts.training.evaluate.evaluate import evaluate
    from sae_concepts.training.report.report import build_report
    from sae_concepts.sae_core.atomic import check_replaceable
    from sae_concepts.training.dictionary.dictionary import DictionaryConfig, build_dictionary
    evaluate(evaluate_cfg(world))
    evaluate(evaluate_cfg(world))                       # a stage may replace its own earlier output
    build_dictionary(DictionaryConfig(shards=str(world / "eval"), sae=str(world / "set.safetensors"),
                                      masks=str(world / "eval" / "masks"), out=str(world / "dict.json"),
                                      word_vectors=str(world / "vectors.txt"), mask_size=IMG), progress=False)
    with pytest.raises(SAEConceptsError, match="is a json file of format 'sae_concepts.concept_dictionary', not a json file"):
        check_replaceable(world / "dict.json", "--out", "json")      # metrics over a dictionary
    metrics = json.loads((world / "metrics.json").read_text())
    assert metrics["built_from"]["sae_file"] == "set.safetensors"
    (world / "report").mkdir()
    for name in ("s9_c99.png", "plot_old_metric.png", "my_notes.png"):   # an earlier report's cards; the user's file
        (world / "report" / name).write_bytes(b"")
    build_report(world / "report", world / "set.safetensors", world / "dict.json", world / "metrics.json", world / "eval")
    left = {p.name for p in (world / "report").glob("*.png")}
    assert "my_notes.png" in left and not {"s9_c99.png", "plot_old_metric.png"} & left and "s0_c0.png" in left
    metrics["built_from"]["fingerprint"] = "0" * 16                  # as if evaluated on another set
    (world / "other_metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(SAEConceptsError, match="other_metrics.json describes the SAE set set.safetensors"):
        build_report(world / "report2", world / "set.safetensors", world / "dict.json", world / "other_metrics.json",
                     world / "eval")


def test_a_collect_refused_after_it_made_its_out_folder_leaves_none_behind(tmp_path, comfy, capsys):
    (tmp_path / "p.txt").write_text("a dog\n")
    for bad in (["--sampler", "foo"], []):                      # refused before / while loading the model
        rc, _, err = run_cli(capsys, "collect", "--checkpoint", tmp_path / "p.txt", "--prompts", tmp_path / "p.txt",
                             "--out", tmp_path / "c", *bad)
        assert rc == 2 and ("--sampler 'foo'" in err if bad else "cannot be loaded as a diffusion model" in err), err
        assert not (tmp_path / "c").exists()


def test_the_shard_repair_advice_works_on_a_real_collection(tmp_path, tiny_model):
    """Host tier: a shard of a real `collect` run (ComfyUI's SD1.x U-Net, tiny, random weights) is
    damaged in place; train names it and advises deleting it and rerunning collect; doing exactly
    that redoes that shard bit for bit, and train runs."""
    import re
    from random_models import tiny_sd1_text
    from sae_concepts.training.collect.collect import CollectConfig, collect
    from sae_concepts.training.storage.shards import ShardError, ShardSet
    from sae_concepts.training.train.train import train_saes
    loaded = (tiny_model, tiny_sd1_text(), None)   # no VAE: this collection saves no images
    (tmp_path / "prompts.txt").write_text("a dog on a beach\na red car\na castle on a hill\n")
    cfg = CollectConfig(prompts=str(tmp_path / "prompts.txt"), out=str(tmp_path / "acts"), blocks="middle_block.1",
                        timesteps="1.0", steps=2, width=64, height=64, prompts_per_shard=1, seed=5,
                        save_images=False)
    collect(cfg, *loaded, progress=False)
    before = {s["file"]: s["sha256"] for s in ShardSet.open(cfg.out).shards}
    assert len(before) == 3
    corrupt_same_size(tmp_path / "acts" / "shard_r000_00001.safetensors")
    cmd, train = train_cmd(tmp_path, batch_size=4, shuffle_window=8)
    with pytest.raises(ShardError) as err:
        train_saes(cmd, train, progress=False)
    message = str(err.value)
    assert "delete it and rerun collect" in message
    Path(re.search(r"shard (\S+) is corrupted", message).group(1)).unlink()     # the advice, as written
    collect(cfg, *loaded, progress=False)                                        # "rerun collect"
    assert {s["file"]: s["sha256"] for s in ShardSet.open(cfg.out).shards} == before
    assert train_saes(cmd, train, progress=False)[0].info.training["vectors_seen"] > 0


def test_load_sae_node_refuses_a_dictionary_of_another_sae_set(world, comfy):
    import shutil
    import folder_paths
    from sae_concepts.nodes.load_sae import LoadSAE
    sae_dir = world / "models_sae"
    sae_dir.mkdir()
    shutil.copy(world / "set.safetensors", sae_dir / "right.safetensors")
    shutil.copy(world / "dict.json", sae_dir / "right_dictionary.json")
    matching_set(sae_dir / "retrained.safetensors", seed=1)
    folder_paths.add_model_folder_path("sae", str(sae_dir))
    folder_paths.add_model_folder_path("sae_dictionaries", str(sae_dir))
    loaded = LoadSAE.execute("right.safetensors", "right_dictionary.json", "from file")
    assert loaded.result[0].dictionary is not None
    with pytest.raises(SAEConceptsError, match=r"right_dictionary\.json was built from the SAE set set\.safetensors "
                                               r".*not from .*retrained\.safetensors"):
        LoadSAE.execute("retrained.safetensors", "right_dictionary.json", "from file")


# ---- the sweep: every option with a value that makes no sense is a clear one-line error, rc 2 ----------
@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A finished small pipeline: training shards, an evaluation world, an SAE set and its dictionary."""
    from sae_concepts.training.dictionary.dictionary import DictionaryConfig, build_dictionary
    root = tmp_path_factory.mktemp("sweep")
    planted_shards(root / "acts")
    planted_shards(root / "acts16", d=16)
    acts = tiny_world(root / "eval")
    (root / "other_key").mkdir()
    for f in (root / "acts").iterdir():   # the same data filed under another block
        if f.is_file():
            text = f.read_bytes()
            (root / "other_key" / f.name).write_bytes(text.replace(b"middle_block.1", b"middle_block.9")
                                                      if f.suffix == ".json" else text)
    matching_set(root / "set.safetensors")
    matching_set(root / "retrained.safetensors", seed=1)
    build_dictionary(DictionaryConfig(shards=str(acts), sae=str(root / "set.safetensors"), masks=str(acts / "masks"),
                                      out=str(root / "dict.json"), word_vectors=str(root / "vectors.txt"),
                                      mask_size=IMG), progress=False)
    (root / "wrong_masks" / "dog").mkdir(parents=True)
    (root / "prompts_empty.txt").write_text("\n \n")
    (root / "prompts.txt").write_text("a dog\n")
    (root / "a_file").write_text("")
    (root / "not_json.json").write_text("{")
    (root / "vectors_other.txt").write_text("zebra 0.1 0.2\n")   # knows none of the world's labels
    (root / "bad_manifest").mkdir()
    (root / "bad_manifest" / "manifest_r000.json").write_text("{}")
    return root


EV = ["evaluate", "--shards", "{r}/eval", "--sae", "{r}/set.safetensors", "--dictionary", "{r}/dict.json",
      "--word-vectors", "{r}/vectors.txt", "--out", "{r}/m.json"]
DI = ["dictionary", "--quiet", "--shards", "{r}/eval", "--sae", "{r}/set.safetensors", "--masks", "{r}/eval/masks",
      "--word-vectors", "{r}/vectors.txt", "--out", "{r}/d.json"]
TR = ["train", "--shards", "{r}/acts", "--out", "{r}/t.safetensors", "--quiet", "--k", "2", "--expansion-factor", "2",
      "--batch-size", "64", "--shuffle-window", "256"]
CO = ["collect", "--checkpoint", "{r}/none.safetensors", "--prompts", "{r}/prompts.txt", "--out", "{r}/c"]
RP = ["report", "--sae", "{r}/set.safetensors", "--dictionary", "{r}/dict.json", "--metrics", "{r}/m.json",
      "--shards", "{r}/eval", "--out", "{r}/rep"]
TW = ["toyworld", "train", "--out", "{r}/tw", "--steps", "2", "--quiet"]
TP = ["toyworld", "paper", "--out", "{r}/tp", "--quiet"]
SG = ["segment", "--shards", "{r}/eval", "--masks", "{r}/sm", "--grounding-dino", "{r}/gd", "--sam", "{r}/sam"]

SWEEP = [
    # collect: refused before ComfyUI is imported or a model is loaded
    (CO + ["--steps", "0"], "--steps must be positive"),
    (CO + ["--steps", "-5"], "--steps must be positive"),
    (CO + ["--cfg", "nan"], "--cfg must be a finite number"),
    (CO + ["--cfg", "0"], "--cfg must be positive"),
    (CO + ["--width", "100"], "multiples of 8"),
    (CO + ["--height", "-64"], "--height must be positive"),
    (CO + ["--batch-size", "0"], "--batch-size must be positive"),
    (CO + ["--prompts-per-shard", "0"], "--prompts-per-shard must be positive"),
    (CO + ["--positions", "-1"], "--positions must be >= 0"),
    (CO + ["--limit", "-1"], "--limit must be >= 0"),
    (CO + ["--timesteps", ""], "--timesteps must be comma-separated numbers in [0, 1]"),
    (CO + ["--timesteps", "2.0"], "--timesteps must be comma-separated numbers in [0, 1]"),
    (CO + ["--timesteps", "early"], "--timesteps must be comma-separated numbers in [0, 1]"),
    (CO + ["--guidance", "inf"], "--guidance must be a finite number"),
    (CO + ["--weight-dtype", "int4"], "--weight-dtype must be one of default, fp32, fp16, bf16, fp8_e4m3fn"),
    (["collect", "--checkpoint", "{r}/x.safetensors", "--prompts", "{r}/prompts_empty.txt"], "holds no prompts"),
    (["collect", "--checkpoint", "{r}/x.safetensors", "--prompts", "{r}/nothere.txt"], "prompt file not found"),
    (["collect", "--prompts", "{r}/prompts.txt"], "collect needs --checkpoint and --prompts"),
    # train
    (TR + ["--k", "0"], "--k must be positive"),
    (TR + ["--k", "1000"], "--k 1000 is more than the SAE's 16 features"),
    (TR + ["--expansion-factor", "0"], "--expansion-factor must be positive"),
    (TR + ["--batch-size", "-1"], "--batch-size must be positive"),
    (TR + ["--epochs", "0"], "--epochs must be positive"),
    (TR + ["--shuffle-window", "10"], "--shuffle-window (10) must hold at least one batch"),
    (TR + ["--lr", "nan"], "--lr must be a finite number"),
    (TR + ["--lr", "-0.1"], "--lr must be positive"),
    (TR + ["--auxk-alpha", "nan"], "--auxk-alpha must be a finite number"),
    (TR + ["--k-aux", "-1"], "--k-aux must be >= 0"),
    (TR + ["--dead-after", "-1"], "--dead-after must be >= 0"),
    (TR + ["--max-steps", "-3"], "--max-steps must be >= 0"),
    (TR + ["--log-every", "0"], "--log-every must be positive"),
    (TR + ["--init-sample", "0"], "--init-sample must be positive"),
    (TR + ["--device", "tpu"], "--device must be cpu, cuda, cuda:N or auto"),
    (TR + ["--only", "output_blocks.9.1"], "--only 'output_blocks.9.1': no activation key matches"),
    (TR + ["--out", "{r}/a_file/t.safetensors"], "is not writable"),
    (["train", "--shards", "{r}/nothing", "--out", "{r}/t.safetensors"], "not a collection folder"),
    (["train", "--out", "{r}/t.safetensors"], "train needs --shards"),
    # dictionary
    (DI + ["--threshold", "1.5"], "--threshold applies to maps normalised to [0, 1]"),
    (DI + ["--threshold", "nan"], "--threshold must be a finite number"),
    (DI + ["--iou", "0"], "--iou must be in (0, 1)"),
    (DI + ["--iou", "2"], "--iou must be in (0, 1)"),
    (DI + ["--mask-size", "0"], "--mask-size must be positive"),
    (DI + ["--masks", "{r}/nowhere"], "masks folder"),
    (DI + ["--masks", "{r}/wrong_masks"], "no mask for any of the 6 images"),
    (DI + ["--word-vectors", "{r}/nothere.txt"], "word vectors file"),
    (DI + ["--sae", "{r}/not_json.json"], "not_json.json: unknown format"),
    (DI + ["--out", "{r}/a_file/d.json"], "is not writable"),
    (DI + ["--iou", "0.999"], "the dictionary would be empty"),
    # evaluate
    (EV + ["--score-threshold", "nan"], "--score-threshold must be a finite number"),
    (EV + ["--score-threshold", "2"], "--score-threshold is a cosine similarity"),
    (EV + ["--mask-size", "-1"], "--mask-size must be positive"),
    (["evaluate", "--shards", "{r}/eval", "--sae", "{r}/set.safetensors", "--masks", "{r}/eval/masks"],
     "--masks needs --dictionary"),
    (EV + ["--masks", "{r}/wrong_masks"], "expected .*<masks>/<image id, 6 digits>/<label>.png"),
    (EV + ["--sae", "{r}/retrained.safetensors"], "was built from the SAE set set.safetensors"),
    (EV + ["--dictionary", "{r}/not_json.json"], "not_json.json: not valid JSON"),
    (EV + ["--shards", "{r}/acts16"], "takes d=8 vectors, but .*acts16 holds d=16"),
    (DI + ["--shards", "{r}/acts16"], "takes d=8 vectors, but .*acts16 holds d=16"),
    (RP + ["--shards", "{r}/acts16"], "takes d=8 vectors, but .*acts16 holds d=16"),
    (EV + ["--shards", "{r}/other_key"], "no SAE of .*set.safetensors has activations in"),
    (EV + ["--out", "{r}/a_file/m.json"], "is not writable"),
    (["evaluate", "--sae", "{r}/set.safetensors"], "evaluate needs --shards"),
    # report
    (RP + ["--metrics", "{r}/not_json.json"], "not_json.json: not valid JSON"),
    (RP + ["--metrics", "{r}/nothere.json"], "nothere.json: file not found"),
    (RP + ["--sae", "{r}/retrained.safetensors"], "was built from the SAE set set.safetensors"),
    (RP + ["--out", "{r}/a_file/rep"], "is not writable"),
    # segment
    (SG + ["--box-threshold", "1.5"], "--box-threshold is a score in"),
    (SG + ["--text-threshold", "nan"], "--text-threshold must be a finite number"),
    (SG + ["--tagger", "clip", "--clip-top-k", "0", "--clip", "{r}/clip"], "--clip-top-k must be positive"),
    (SG + ["--tagger", "ram"], "--tagger must be prompt or clip"),
    (["segment", "--shards", "{r}/eval", "--masks", "{r}/sm", "--sam", "{r}/sam"], "needs both --grounding-dino and --sam"),
    # demo, info
    (["demo", "--epochs", "0", "--out", "{r}/demo"], "--epochs must be positive"),
    (["demo", "--comfyui", "on", "--out", "{r}/demo"], "--comfyui: for the synthetic world only"),
    (["demo", "--epochs", "2", "--keep-activations", "--out", "{r}/demo"],
     "--epochs, --keep-activations: for the synthetic world only"),
    # an output that would destroy an input or another kind of file is refused before any work
    (DI + ["--out", "{r}/set.safetensors"], "is also the --sae input"),
    (EV + ["--out", "{r}/set.safetensors"], "is also the --sae input"),
    (EV + ["--out", "{r}/retrained.safetensors"], "already exists and is a safetensors file of format 'sae_concepts.sae_set', not a json file"),
    (["itda", "--shards", "{r}/acts", "--out", "{r}/set.safetensors"], "not a safetensors file of format 'sae_concepts.itda_set'"),
    (TW + ["--weights", "{r}/set.safetensors"], "--weights .*set.safetensors already exists"),
    (["toyworld", "export", "--out", "{r}", "--weights", "{r}/w.safetensors"], "no training checkpoint there"),
    # results that would be junk
    (DI + ["--word-vectors", "{r}/vectors_other.txt"], "none of the dictionary's labels"),
    (EV + ["--itda", "{r}/set.safetensors"], "not an ITDA set"),
    (RP + ["--images", "{r}/nowhere"], "--images .*no folder of images"),
    (["train", "--shards", "{r}/bad_manifest", "--out", "{r}/t.safetensors"], "not a collection manifest"),
    # toyworld: refused before ComfyUI is imported or a step is taken
    (TW + ["--ema-decay", "2"], "--ema-decay must be in 0..1"),
    (TW + ["--batch-size", "0"], "--batch-size must be 1 or more"),
    (TW + ["--lr", "nan"], "--lr must be a finite number > 0"),
    (TW + ["--prompt-dropout", "1.5"], "--prompt-dropout must be in 0..1"),
    (TW + ["--init", "foo"], "--init must be one of torch, unit"),
    (TW + ["--threads", "0"], "--threads must be 1 or more"),
    (TW + ["--stop-at", "-1"], "--stop-at must be 0"),
    (TP + ["--spatial-betas", "abc"], "--spatial-betas 'abc': expected comma-separated finite numbers"),
    (TP + ["--style-betas", "median:2"], "--style-betas 'median:2': expected normalisation:betas"),
    (TP + ["--blocks", "output_blocks.6.1"], "--blocks 'output_blocks.6.1': not a collected block"),
    (TP + ["--train-images", "0"], "--train-images must be 1 or more"),
    (["info", "{r}/nothere.safetensors"], "no such file or folder"),
    (["info", "{r}/not_json.json"], "unknown format"),
]


@pytest.mark.parametrize("argv, expected", SWEEP, ids=[f"{i:02d}-{a[0]}" for i, (a, _) in enumerate(SWEEP)])
def test_sweep_nonsense_option_values_are_one_line_errors(base, capsys, argv, expected):
    import re
    if "--metrics" in argv and "{r}/m.json" in argv and not (base / "m.json").exists():
        from sae_concepts.training.evaluate.evaluate import evaluate
        evaluate(evaluate_cfg(base, out=str(base / "m.json"), masks=""))
    rc, _, err = run_cli(capsys, *[a.replace("{r}", str(base)) for a in argv])
    assert rc == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert expected in err or re.search(expected, err), err


def node_set(d=128, dictionary=True):
    from sae_concepts.sae_core import SAESet
    from sae_concepts.sae_core.concept_dictionary import ConceptDictionary, SAEConcepts
    sae = TopKSAE(SaeConfig(d_in=d, n_latents=256, k=8))
    s = SAESet([SAEEntry(sae.eval().requires_grad_(False), SAEInfo(block="middle_block.1", t=None, cond="both"))])
    if dictionary:
        s.dictionary = ConceptDictionary([SAEConcepts("middle_block.1", None, "both",
                                                      {3: {"labels": ["dog"], "counts": {"dog": 1}}})])
    return s


HALF = torch.cat([torch.ones(1, 8, 4), torch.zeros(1, 8, 4)], dim=2)
NODE_SWEEP = [
    (dict(beta=math.nan), "beta must be a finite number"),
    (dict(beta=math.inf), "beta must be a finite number"),
    (dict(start=0.6, end=0.4), "start_percent <= end_percent"),
    (dict(start=-0.1), "0 <= start_percent"),
    (dict(end=1.5), "end_percent <= 1"),
    (dict(concept=" , "), "concept is empty"),
    (dict(concept="9999"), "out of range"),
    (dict(concept="-3"), "out of range"),
    (dict(concept="zebra"), "no concept of block middle_block.1 is labelled"),
    (dict(concept="dog", dictionary=False), "needs a concept dictionary"),
    (dict(mask=None), "needs a mask"),
    (dict(mask=torch.ones(1, 1, 8, 8, 3)), "mask must be [H, W] or [B, H, W]"),
    (dict(mask=torch.full((8, 8), math.nan)), "NaN/Inf"),
    (dict(d=64), "has d=64, but block middle_block.1 of this model has 128 channels"),
    (dict(block="input_blocks.8.1"), "no SAE for block"),
    (dict(rows="sideways"), "rows must be one of"),
    (dict(mode="loud"), "mode must be one of"),
]


@pytest.mark.parametrize("bad, expected", NODE_SWEEP, ids=[f"{i:02d}" for i in range(len(NODE_SWEEP))])
def test_sweep_nonsense_node_inputs_are_refused_before_sampling(tiny_model, bad, expected):
    from sae_concepts.nodes.steering import steer_model
    a = dict(concept="3", beta=10.0, start=0.0, end=0.5, rows="both", mask=HALF, d=128, dictionary=True,
             block="middle_block.1", mode="paper")
    a.update(bad)
    with pytest.raises(SAEConceptsError) as err:
        steer_model(tiny_model, node_set(a["d"], a["dictionary"]), a["block"], a["concept"], "spatial", a["beta"],
                    a["start"], a["end"], a["rows"], mask=a["mask"], mode=a["mode"])
    assert expected in str(err.value), err.value


def test_a_shard_written_with_nan_activations_is_named_not_reported_as_a_nan_loss(tmp_path):
    """The checksum is right (the NaN was in the data when written, e.g. an fp16 overflow)."""
    from sae_concepts.training.storage.shards import ShardError, ShardWriter, activation_key
    from sae_concepts.training.train.train import train_saes
    planted_shards(tmp_path / "acts", n_shards=2)
    key = activation_key("middle_block.1", 1.0, "cond")
    x = torch.randn(256, 8).half()
    x[5, 2] = math.inf
    ShardWriter(tmp_path / "acts", run_config={"model_family": "sd1", "d": 8}).write(
        2, {f"{key}/acts": x, f"{key}/prompt": torch.zeros(256, dtype=torch.int64),
            f"{key}/pos": torch.arange(256, dtype=torch.int32)}, {"prompt_ids": [2]})
    with pytest.raises(ShardError, match=r"shard_r000_00002\.safetensors: middle_block\.1\|t=1\|cond holds 1 NaN/Inf"):
        train_saes(*train_cmd(tmp_path), progress=False)
