"""Bad input is refused with a clear error (issue 13): every stage checks what it is given, names the
file / option, what it expected and what it found, and never exits 0 with a wrong or NaN result."""
import math

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
