"""Shared fixtures: a tiny atomic dataset with item text, tiny model directories, quiet configs."""

import os
import random
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
SHARED_DATASETS = os.path.abspath(os.path.join(ROOT, "..", "shared", "datasets"))



def write_tiny_dataset(folder, name="tiny", n_users=40, n_items=30, min_len=5, max_len=12, seed=0, empty_text_items=()):
    """RecBole atomic files for a small dataset with a popularity skew and item text."""
    rng = random.Random(seed)
    os.makedirs(os.path.join(folder, name), exist_ok=True)
    weights = [1.0 / (i + 1) ** 0.8 for i in range(n_items)]
    with open(os.path.join(folder, name, f"{name}.inter"), "w") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for u in range(n_users):
            length = rng.randint(min_len, max_len)
            items = rng.choices(range(n_items), weights=weights, k=length)
            for t, i in enumerate(items):
                f.write(f"u{u}\ti{i}\t{t}\n")
    colours = ["red", "blue", "green", "black", "white"]
    kinds = ["lamp", "chair", "desk", "pen", "cup", "bag"]
    with open(os.path.join(folder, name, f"{name}.item"), "w") as f:
        f.write("item_id:token\ttitle:token\tbrand:token\tcategories:token_seq\n")
        for i in range(n_items):
            if f"i{i}" in empty_text_items:
                f.write(f"i{i}\t\t\t\n")
                continue
            title = f"{colours[i % 5]} {kinds[i % 6]} model {i}"
            brand = f"brand{i % 4}"
            cats = f"Home Office_Supplies {kinds[i % 6].capitalize()}"
            f.write(f"i{i}\t{title}\t{brand}\t{cats}\n")
    return folder


@pytest.fixture
def tiny_data(tmp_path):
    """Folder holding tiny/tiny.inter and tiny/tiny.item."""
    return write_tiny_dataset(str(tmp_path / "data"))


def tiny_config(data_path, tmp_path, **overrides):
    """Config dict for fast runs on the tiny dataset."""
    config = {
        "data_path": data_path,
        "checkpoint_dir": str(tmp_path / "saved"),
        "epochs": 1,
        "train_batch_size": 64,
        "eval_batch_size": 256,
        "MAX_ITEM_LIST_LENGTH": 10,
        "hidden_size": 16,
        "inner_size": 32,
        "n_layers": 1,
        "n_heads": 1,
        "embedding_size": 16,
        "seed": 2024,
        "show_progress": False,
        "state": "WARNING",
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "text_fields": ["title", "brand", "categories"],
        "prompt_instruction": "The item has the following attributes:",
    }
    config.update(overrides)
    return config


def rand_features_config(data_path, tmp_path, **overrides):
    """tiny_config with a random 12-dim feature file ``rand`` for the 30 tiny items (``llm_feature: rand``)."""
    import numpy as np

    from recbole_llm.llm.features import feature_base, save_features

    folder = str(tmp_path / "features")
    tokens = [f"i{i}" for i in range(30)]
    save_features(feature_base(folder, "tiny", "rand"), tokens, np.random.default_rng(0).normal(size=(30, 12)))
    return tiny_config(data_path, tmp_path, feature_dir=folder, llm_feature="rand", **overrides)


@pytest.fixture
def tiny_llama_dir(tmp_path_factory):
    """A randomly initialised tiny LlamaModel directory with a word-level tokenizer (no download)."""
    from transformers import LlamaConfig, LlamaModel, PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers

    path = str(tmp_path_factory.mktemp("tiny_llama"))
    words = "the item has following attributes title brand categories is red blue green black white lamp chair desk pen cup bag model home office supplies".split()
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3}
    for w in words + [str(i) for i in range(100)] + [f"brand{i}" for i in range(10)] + [";", ":", ".", ",", "\\n"]:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.save_pretrained(path)
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      pad_token_id=3, bos_token_id=1, eos_token_id=2)
    LlamaModel(cfg).save_pretrained(path)
    return path


def assert_reproduces(result, overrides=None):
    """The run's reported test metrics are those of its best checkpoint, rebuilt from the file alone."""
    from recbole_llm.quick_start import evaluate_model_file

    again = evaluate_model_file(result["model_file"], overrides)
    assert dict(again) == dict(result["test_result"])
    assert all(0.0 <= value <= 1.0 for key, value in again.items() if "@" in key)
