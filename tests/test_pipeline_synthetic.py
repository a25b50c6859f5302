"""The pipeline's later stages on synthetic scenes with known masks and labels (every tier)."""
import json

import pytest
import torch

from sae_concepts.sae_core import TrainConfig
from sae_concepts.sae_core.concept_dictionary import ConceptDictionary
from sae_concepts.training import cli
from sae_concepts.training.demo.demo import D, truth_checks, write_split
from sae_concepts.training.dictionary.dictionary import DictionaryConfig, binarise, build_dictionary, iou_matrix
from sae_concepts.training.evaluate.evaluate import EvaluateConfig, evaluate
from sae_concepts.training.report.report import build_report
from sae_concepts.training.train.train import TrainCommandConfig, train_saes
from sae_concepts.training.dictionary.word_vectors import load_word_vectors


def test_iou_and_binarise_against_hand_computed_values():
    a = torch.zeros(1, 4, 4, dtype=torch.bool)
    a[0, :2, :2] = True
    b = torch.zeros(2, 4, 4, dtype=torch.bool)
    b[0, :2, :4] = True
    b[1, 2:, 2:] = True
    torch.testing.assert_close(iou_matrix(a, b), torch.tensor([[0.5, 0.0]]))
    maps = torch.tensor([[[0.0, 0.05], [0.5, 1.0]]])
    assert binarise(maps, 2, 0.1).tolist() == [[[False, False], [True, True]]]


def test_default_word_vectors_are_glove():
    kv = load_word_vectors()
    assert kv.vector_size == 50 and kv.similarity("dog", "cat") > 0.9
    assert "manor" in [w for w, _ in kv.most_similar("castle", topn=3)]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipe")
    data = root / "synthetic"
    write_split(data, "train", 120, 0, seed=1, with_pictures=False)
    write_split(data, "heldout", 30, 100_000, seed=2, with_pictures=True)
    write_split(data, "eval", 20, 200_000, seed=3, with_pictures=True)
    sae = root / "set.safetensors"
    train_saes(TrainCommandConfig(shards=str(data / "train"), out=str(sae), only="middle_block.1,t=1",
                                  expansion_factor=2, k=1, batch_size=1024, shuffle_window=1 << 15, epochs=10),
               TrainConfig(lr=3e-3, dead_after=50_000, k_aux=32, checkpoint_every=1000), progress=False)
    return root, data, sae


def test_dictionary_evaluate_report_against_planted_truth(pipeline):
    root, data, sae = pipeline
    d = build_dictionary(DictionaryConfig(shards=str(data / "heldout"), sae=str(sae), masks=str(data / "heldout" / "masks"),
                                          out=str(root / "dict.json")), progress=False)
    assert len(d.entries) == 2 and (root / "dict.embeddings.npz").exists()
    truth = truth_checks(sae, ConceptDictionary.load(root / "dict.json"))
    assert all(r["recovered"] == 1.0 and r["labels_right"] >= 0.9 for r in truth), truth
    rows = evaluate(EvaluateConfig(shards=str(data / "eval"), sae=str(sae), dictionary=str(root / "dict.json"),
                                   masks=str(data / "eval" / "masks"), out=str(root / "metrics.json")))
    for r in rows:
        assert r["l0"] == 1.0 and r["fvu"] < 0.3 and r["dead_fraction"] < 1.0
        assert r["cohesion"] > 0.95 and r["inter_concept_similarity"] < 0.6
        assert r["composition_iou"] > 0.45 and r["objects"] > 20
    page = build_report(root / "report", sae, root / "dict.json", root / "metrics.json", data / "eval",
                        synthetic_note="SYNTHETIC", truth=truth)
    text = page.read_text()
    assert "SYNTHETIC" in text and "plot_fvu.png" in text and text.count("class='card'") >= 20
    assert "data-labels='dog" in text or "data-labels='dog " in text or "dog" in text
    assert all((root / "report" / f).exists() for f in ("plot_fvu.png", "plot_composition_iou.png"))


def test_cli_dictionary_evaluate_report(pipeline, capsys):
    root, data, sae = pipeline
    assert cli.main(["dictionary", "--quiet", "--shards", str(data / "heldout"), "--sae", str(sae),
                     "--masks", str(data / "heldout" / "masks"), "--out", str(root / "d2.json")]) == 0
    assert cli.main(["evaluate", "--shards", str(data / "eval"), "--sae", str(sae), "--dictionary",
                     str(root / "d2.json"), "--masks", str(data / "eval" / "masks"), "--out", str(root / "m2.json")]) == 0
    assert cli.main(["report", "--sae", str(sae), "--dictionary", str(root / "d2.json"), "--metrics",
                     str(root / "m2.json"), "--shards", str(data / "eval"), "--out", str(root / "r2")]) == 0
    out = capsys.readouterr().out
    assert "middle_block.1" in out and (root / "r2" / "index.html").exists()
    assert cli.main(["dictionary", "--shards", str(data / "heldout"), "--sae", str(sae), "--masks",
                     str(root / "nowhere")]) == 2
    assert "masks folder" in capsys.readouterr().err


def test_dictionary_needs_all_positions(tmp_path, pipeline):
    from sae_concepts.training.storage.shards import ShardWriter, activation_key
    root, data, sae = pipeline
    key = activation_key("middle_block.1", 1.0, "cond")
    w = ShardWriter(tmp_path / "sub")
    w.write(0, {f"{key}/acts": torch.zeros(5, D).half(), f"{key}/prompt": torch.zeros(5, dtype=torch.int64),
                f"{key}/pos": torch.arange(5, dtype=torch.int32)},
            {"prompt_ids": [0], "prompts": ["x"], "seeds": [0], "grids": {"middle_block.1": [16, 16]}})
    from sae_concepts.training.storage.masks import save_mask
    save_mask(tmp_path / "masks", 0, "dog", torch.ones(16, 16, dtype=torch.bool))   # masks for image 0
    with pytest.raises(ValueError, match="needs every position"):
        build_dictionary(DictionaryConfig(shards=str(tmp_path / "sub"), sae=str(sae), masks=str(tmp_path / "masks"),
                                          out=str(tmp_path / "d.json")), progress=False)


def test_demo_end_to_end(tmp_path, capsys):
    """The README's main job, without ComfyUI: every stage checked against the planted truth."""
    assert cli.main(["demo", "--world", "synthetic", "--out", str(tmp_path / "demo"), "--quiet", "--comfyui", "off"]) == 0
    out = capsys.readouterr().out
    assert "SYNTHETIC DEMO" in out and "all planted concepts recovered and labelled" in out
    summary = json.loads((tmp_path / "demo" / "demo_summary.json").read_text())
    assert len(summary["metrics"]) == 18 and summary["synthetic"] is True
    assert min(r["composition_iou"] for r in summary["metrics"]) > 0.45
    page = (tmp_path / "demo" / "report" / "index.html").read_text()
    assert "SYNTHETIC DEMO" in page and "Truth checks" in page
    # Files get the user's umask (atomic writes made them 0600), and the output stays small.
    from sae_concepts.sae_core.atomic import current_umask
    files = [p for p in (tmp_path / "demo").rglob("*") if p.is_file()]
    assert {oct(p.stat().st_mode & 0o777) for p in files} == {oct(0o666 & ~current_umask())}
    assert sum(p.stat().st_size for p in files) < 60 * 2**20
    assert not (tmp_path / "demo" / "synthetic" / "train").exists()
    # Resuming a finished demo redoes nothing and gives the same SAEs.
    from sae_concepts.sae_core import load_sae
    before = load_sae(tmp_path / "demo" / "sae_set.safetensors")
    assert cli.main(["demo", "--world", "synthetic", "--out", str(tmp_path / "demo"), "--quiet", "--comfyui", "off"]) == 0
    after = load_sae(tmp_path / "demo" / "sae_set.safetensors")
    for a, b in zip(before, after):
        assert a.info == b.info and torch.equal(a.sae.W_dec, b.sae.W_dec)


def test_demo_without_comfyui_says_so_in_one_line_and_runs_the_synthetic_world(tmp_path, capsys, monkeypatch):
    """The README's set-up line on a machine without ComfyUI: no traceback, one line saying why
    and how to get ComfyUI, then the synthetic world, exit 0."""
    import sae_concepts.host.comfy_env as comfy_env
    from sae_concepts.training.demo.toy_demo import toy_world_unavailable
    if comfy_env.find_comfyui() is not None:   # missing weights are the other reason, said as plainly
        assert toy_world_unavailable(tmp_path / "no.safetensors") == f"the Toy World weights {tmp_path / 'no.safetensors'} are missing"
    monkeypatch.setattr(comfy_env, "find_comfyui", lambda: None)
    assert cli.main(["demo", "--out", str(tmp_path / "demo"), "--quiet"]) == 0
    captured = capsys.readouterr()
    out = captured.out
    said = [line for line in out.splitlines() if "Toy World unavailable" in line]
    assert len(said) == 1 and comfy_env.GET_COMFYUI in said[0] and "synthetic world instead" in said[0]
    assert "SYNTHETIC DEMO" in out and "Traceback" not in out + captured.err
    assert json.loads((tmp_path / "demo" / "demo_summary.json").read_text())["synthetic"] is True
