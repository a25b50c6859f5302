"""Native SAE-set files and the foreign formats, written here in each format's exact layout,
loaded, and compared against each format's own encode/decode rule written out densely."""
import json

import pytest
import torch
from safetensors.torch import save_file

from sae_concepts.sae_core import (SAEEntry, SAEFileError, SAEInfo, SAESet, SaeConfig, TopKSAE,
                                   load_sae, save_sae_set)
from sae_concepts.sae_core import native_format

D, N, K = 16, 64, 4


def rand(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def dense_topk_relu(pre, k):
    v, i = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, i, v.relu())


def assert_same_outputs(sae: TopKSAE, encode_ref, decode_ref, x):
    code = sae.encode(x)
    z_ref = encode_ref(x)
    torch.testing.assert_close(sae.dense_code(code), z_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sae.decode(code), decode_ref(z_ref), rtol=1e-5, atol=1e-5)


def trained_like_sae(seed=0, k=K, scale=2.5):
    sae = TopKSAE(SaeConfig(d_in=D, n_latents=N, k=k, latent_bias=True))
    with torch.no_grad():
        sae.encoder_weight.copy_(rand(N, D, seed=seed))
        sae.latent_bias.copy_(rand(N, seed=seed + 1))
        sae.b_pre.copy_(rand(D, seed=seed + 2))
        sae.input_scale.fill_(scale)
    return sae


# ---- native --------------------------------------------------------------------------
def test_native_set_round_trip_and_selection(tmp_path):
    entries = []
    for i, (block, t, cond) in enumerate([("input_blocks.8.1", 1.0, "cond"), ("middle_block.1", 0.5, "uncond"),
                                          ("up_blocks.1.attentions.0", 0.0, "cond"), ("input_blocks.8.1", 0.0, "cond")]):
        info = SAEInfo(block=block, t=t, cond=cond, training={"vectors_seen": 100 * i, "fvu": 0.4})
        entries.append(SAEEntry(trained_like_sae(seed=10 * i), info,
                                latent_mean=rand(N, seed=i).abs() if i == 1 else None))
    path = tmp_path / "set.safetensors"
    save_sae_set(path, entries)
    loaded = load_sae(path)
    assert len(loaded) == 4 and loaded.blocks == ["input_blocks.8.1", "middle_block.1", "output_blocks.3.1"]
    x = rand(50, D, seed=3)
    for a, b in zip(entries, loaded):
        assert b.info == a.info
        assert b.info.block_diffusers == {"input_blocks.8.1": "down_blocks.2.attentions.1",
                                          "middle_block.1": "mid_block.attentions.0",
                                          "output_blocks.3.1": "up_blocks.1.attentions.0"}[b.info.block]
        ca, cb = a.sae.encode(x), b.sae.encode(x)
        assert torch.equal(ca.indices, cb.indices) and torch.equal(ca.values, cb.values)
        assert torch.equal(a.sae.decode(ca), b.sae.decode(cb))
    assert torch.equal(loaded.entries[1].latent_mean, entries[1].latent_mean)
    assert loaded.entries[0].latent_mean is None
    # Picks by block, condition and nearest timestep bucket, by either naming.
    assert loaded.select("down_blocks.2.attentions.1", t=0.9).info.t == 1.0
    assert loaded.select("input_blocks.8.1", t=0.2).info.t == 0.0
    assert loaded.select("diffusion_model.middle_block.1", t=0.9, cond="uncond").info.t == 0.5
    with pytest.raises(KeyError, match="output_blocks.4.1"):
        loaded.select("output_blocks.4.1")
    meta, _ = native_format.read_safetensors(path)
    described = json.loads(meta["saes"])[0]
    assert meta["format_version"] == "1" and described["normalisation"] == {"kind": "scalar", "scale": 2.5}
    assert (described["d"], described["n_f"], described["k"]) == (D, N, K)
    assert described["info"]["model_family"] == "sd1" and described["info"]["training"]["fvu"] == 0.4


def test_native_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "keep.safetensors"
    entry = SAEEntry(trained_like_sae(), SAEInfo(block="middle_block.1", t=1.0, cond="cond"))
    save_sae_set(path, [entry])
    before = path.read_bytes()

    def dies_half_way(tensors, filename, metadata=None):
        open(filename, "wb").write(b"partial")
        raise KeyboardInterrupt("killed")
    monkeypatch.setattr(native_format, "save_file", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        save_sae_set(path, [entry])
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep.safetensors"]


# ---- SDLens ---------------------------------------------------------------------------
def write_sdlens(folder, with_stats=True):
    folder.mkdir(parents=True)
    state = {"encoder.weight": rand(N, D, seed=1), "decoder.weight": rand(D, N, seed=2),
             "pre_bias": rand(D, seed=3), "latent_bias": rand(N, seed=4),
             "stats_last_nonzero": torch.zeros(N, dtype=torch.long)}
    json.dump({"n_dirs_local": N, "d_model": D, "k": K, "auxk": 32, "dead_steps_threshold": 10000},
              open(folder / "config.json", "w"))
    torch.save({"state_dict": state}, folder / "state_dict.pth")
    if with_stats:
        torch.save(rand(N, seed=5).abs(), folder / "mean.pt")
        torch.save(rand(N, seed=6).abs(), folder / "std.pt")
    return state


def test_sdlens_folder_loads_with_identical_outputs(tmp_path):
    s = write_sdlens(tmp_path / "sdlens")
    for target in (tmp_path / "sdlens", tmp_path / "sdlens" / "state_dict.pth"):
        entry = load_sae(target).entries[0]
        assert entry.info.source_format == "sdlens" and entry.sae.cfg.latent_bias
        # SDLens: relu(topk(enc(x - pre_bias) + latent_bias)); z @ decoder.weight.T + pre_bias
        assert_same_outputs(
            entry.sae,
            lambda x: dense_topk_relu((x - s["pre_bias"]) @ s["encoder.weight"].T + s["latent_bias"], K),
            lambda z: z @ s["decoder.weight"].T + s["pre_bias"],
            rand(40, D, seed=9) * 3)
        torch.testing.assert_close(entry.latent_mean, rand(N, seed=5).abs())
        torch.testing.assert_close(entry.latent_std, rand(N, seed=6).abs())
    # The registry names an SDXL block by its ComfyUI path and keeps the diffusers name beside it.
    info = load_sae(tmp_path / "sdlens", info=SAEInfo(model_family="sdxl", block="up_blocks.0.attentions.1")) \
        .entries[0].info
    assert (info.block, info.block_diffusers) == ("output_blocks.1.1", "up_blocks.0.attentions.1")


def test_sdlens_pickle_with_code_is_refused(tmp_path):
    write_sdlens(tmp_path / "evil", with_stats=False)
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))
    torch.save({"state_dict": {"encoder.weight": Exploit()}}, tmp_path / "evil" / "state_dict.pth")
    with pytest.raises(SAEFileError, match=r"state_dict.pth: refused"):
        load_sae(tmp_path / "evil")
    assert not marker.exists()


# ---- sparsify -------------------------------------------------------------------------
def write_sparsify(folder, seed=0, **cfg_over):
    folder.mkdir(parents=True)
    cfg = {"activation": "topk", "expansion_factor": N // D, "normalize_decoder": True, "num_latents": N,
           "k": K, "multi_topk": False, "skip_connection": False, "transcode": False, "d_in": D}
    cfg.update(cfg_over)
    json.dump(cfg, open(folder / "cfg.json", "w"))
    t = {"encoder.weight": rand(N, D, seed=seed + 1), "encoder.bias": rand(N, seed=seed + 2),
         "W_dec": rand(N, D, seed=seed + 3), "b_dec": rand(D, seed=seed + 4)}
    save_file(t, folder / "sae.safetensors")
    return t


def sparsify_ref(t):
    # sparsify: topk(relu(encoder(x - b_dec))); decode W_dec rows weighted + b_dec
    enc = lambda x: dense_topk_relu(((x - t["b_dec"]) @ t["encoder.weight"].T + t["encoder.bias"]).relu(), K)
    return enc, lambda z: z @ t["W_dec"] + t["b_dec"]


def test_sparsify_folder_and_multi_hookpoint_checkpoint(tmp_path):
    t = write_sparsify(tmp_path / "one")
    entry = load_sae(tmp_path / "one" / "sae.safetensors").entries[0]
    assert_same_outputs(entry.sae, *sparsify_ref(t), rand(40, D, seed=9))
    # A sparsify run over several U-Net blocks: one folder per hookpoint.
    ts = {name: write_sparsify(tmp_path / "run" / name, seed=i * 10)
          for i, name in enumerate(["unet.down_blocks.2.attentions.1", "unet.mid_block.attentions.0"])}
    loaded = load_sae(tmp_path / "run")
    assert loaded.blocks == ["input_blocks.8.1", "middle_block.1"]
    assert_same_outputs(loaded.select("mid_block.attentions.0").sae,
                        *sparsify_ref(ts["unet.mid_block.attentions.0"]), rand(40, D, seed=9))


def test_sparsify_unsupported_variants_are_named(tmp_path):
    write_sparsify(tmp_path / "skip", skip_connection=True)
    with pytest.raises(SAEFileError, match=r"cfg.json: a skip connection"):
        load_sae(tmp_path / "skip")


# ---- SAELens --------------------------------------------------------------------------
@pytest.mark.parametrize("apply_b_dec", [True, False])
def test_saelens_folder_loads_with_identical_outputs(tmp_path, apply_b_dec):
    folder = tmp_path / "saelens"
    folder.mkdir()
    json.dump({"architecture": "topk", "d_in": D, "d_sae": N, "k": K, "apply_b_dec_to_input": apply_b_dec,
               "normalize_activations": "none", "dtype": "float32", "hook_name": "x"},
              open(folder / "cfg.json", "w"))
    t = {"W_enc": rand(D, N, seed=1), "b_enc": rand(N, seed=2), "W_dec": rand(N, D, seed=3), "b_dec": rand(D, seed=4)}
    save_file(t, folder / "sae_weights.safetensors")
    entry = load_sae(folder).entries[0]
    shift = t["b_dec"] if apply_b_dec else 0
    assert_same_outputs(entry.sae, lambda x: dense_topk_relu((x - shift) @ t["W_enc"] + t["b_enc"], K),
                        lambda z: z @ t["W_dec"] + t["b_dec"], rand(40, D, seed=9) * 2)


# ---- bad files ------------------------------------------------------------------------
def test_bad_files_get_clear_errors(tmp_path):
    with pytest.raises(SAEFileError, match="no such file"):
        load_sae(tmp_path / "missing.safetensors")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(SAEFileError, match="notes.txt: unknown format"):
        load_sae(tmp_path / "notes.txt")
    save_file({"foo": torch.zeros(3)}, tmp_path / "other.safetensors")
    with pytest.raises(SAEFileError, match=r"other.safetensors: unknown format.*'foo'"):
        load_sae(tmp_path / "other.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SAEFileError, match="empty: folder holds no SAE"):
        load_sae(tmp_path / "empty")

    native = tmp_path / "n.safetensors"
    save_sae_set(native, [SAEEntry(trained_like_sae(), SAEInfo(block="middle_block.1", t=1.0, cond="cond"))])
    data = native.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(SAEFileError, match="trunc.safetensors: not a readable safetensors file"):
        load_sae(tmp_path / "trunc.safetensors")


def _resave(path, mutate):
    meta, tensors = native_format.read_safetensors(path)
    mutate(meta, tensors)
    save_file(tensors, path, metadata=meta)


@pytest.mark.parametrize("mutate, message", [
    (lambda m, t: t.pop("sae.0.W_dec"), r"missing tensor\(s\) \['sae.0.W_dec'\]"),
    (lambda m, t: t.__setitem__("sae.0.W_dec", torch.zeros(N, D + 1)), r"tensor 'sae.0.W_dec' has shape \[64, 17\], expected \[64, 16\]"),
    (lambda m, t: t["sae.0.b_pre"].__setitem__(3, float("nan")), r"tensor 'sae.0.b_pre' holds 1 NaN/Inf"),
    (lambda m, t: t["sae.0.encoder_weight"].__setitem__((0, 0), float("inf")), r"tensor 'sae.0.encoder_weight' holds 1 NaN/Inf"),
    (lambda m, t: m.__setitem__("format_version", "99"), "format_version '99' is not supported"),
    (lambda m, t: m.__setitem__("saes", "{not json"), "metadata 'saes' is missing or not JSON"),
])
def test_corrupted_native_file_is_named(tmp_path, mutate, message):
    path = tmp_path / "bad.safetensors"
    save_sae_set(path, [SAEEntry(trained_like_sae(), SAEInfo(block="middle_block.1", t=1.0, cond="cond"))])
    _resave(path, mutate)
    with pytest.raises(SAEFileError, match="bad.safetensors: " + message):
        load_sae(path)


def test_bad_foreign_files_are_named(tmp_path):
    s = tmp_path / "sdl"
    write_sdlens(s, with_stats=False)
    data = (s / "state_dict.pth").read_bytes()
    (s / "state_dict.pth").write_bytes(data[: len(data) // 3])
    with pytest.raises(SAEFileError, match="state_dict.pth: cannot be read as a torch file"):
        load_sae(s)
    write_sdlens(tmp_path / "sdl2", with_stats=False)
    json.dump({"n_dirs_local": N, "d_model": D + 2, "k": K}, open(tmp_path / "sdl2" / "config.json", "w"))
    with pytest.raises(SAEFileError, match=r"'encoder.weight' has shape \[64, 16\], expected \[64, 18\]"):
        load_sae(tmp_path / "sdl2")
    (tmp_path / "sdl2" / "config.json").write_text("{oops")
    with pytest.raises(SAEFileError, match="config.json: not valid JSON"):
        load_sae(tmp_path / "sdl2")
    json.dump({"n_dirs_local": N, "d_model": D}, open(tmp_path / "sdl2" / "config.json", "w"))
    with pytest.raises(SAEFileError, match="config field 'k' must be a positive integer, got None"):
        load_sae(tmp_path / "sdl2")
    write_sdlens(tmp_path / "sdl3", with_stats=False)
    torch.save({"state_dict": {"encoder.weight": rand(N, D, seed=1)}}, tmp_path / "sdl3" / "state_dict.pth")
    with pytest.raises(SAEFileError, match=r"missing tensor\(s\) \['decoder.weight'"):
        load_sae(tmp_path / "sdl3")
    t = write_sparsify(tmp_path / "sp")
    t["W_dec"][0, 0] = float("nan")
    save_file(t, tmp_path / "sp" / "sae.safetensors")
    with pytest.raises(SAEFileError, match="sae.safetensors: tensor 'W_dec' holds 1 NaN/Inf"):
        load_sae(tmp_path / "sp")
    json.dump({"architecture": "jumprelu", "d_in": D, "d_sae": N}, open(tmp_path / "sp" / "cfg.json", "w"))
    save_file({"W_enc": rand(D, N, seed=1)}, tmp_path / "sp" / "sae_weights.safetensors")
    (tmp_path / "sp" / "sae.safetensors").unlink()
    with pytest.raises(SAEFileError, match="only TopK SAELens SAEs are supported; architecture='jumprelu'"):
        load_sae(tmp_path / "sp")


def test_info_validation():
    with pytest.raises(ValueError, match="unknown SD1.x transformer block 'input_blocks.3.1'"):
        SAEInfo(block="input_blocks.3.1")
    with pytest.raises(ValueError, match="cond must be one of"):
        SAEInfo(block="middle_block.1", cond="positive")
    with pytest.raises(ValueError, match="t must be in"):
        SAEInfo(block="middle_block.1", t=2.0)
    with pytest.raises(ValueError, match="at least one"):
        SAESet([])
