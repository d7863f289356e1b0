"""Pre-training on other datasets (recbole_llm/data/corpus.py, recbole_llm/model/pretrained.py): the corpus keeps its
datasets apart, the pre-trained weights are a plain file that transfers every tower weight, zero-shot scores items the
model never trained on, the caches are found by their full key, and bad input is one line."""

import os

import pytest
import torch

from recbole_llm.config import Config
from recbole_llm.data.corpus import Corpus, split_token, write_corpus
from recbole_llm.errors import UserError
from recbole_llm.model.pretrained import Pretrained, transferable_state
from recbole_llm.quick_start import prepare_artifacts, run_recbole_llm
from recbole_llm.utils import create_dataset, data_preparation, get_model
from tests.conftest import tiny_config, write_tiny_dataset
from tests.test_learn import SMALL


def write_movies(folder, name="movies"):
    """An ml-100k-shaped source: movie_title / release_year / class, real timestamps, a rating column."""
    os.makedirs(os.path.join(folder, name), exist_ok=True)
    with open(os.path.join(folder, name, f"{name}.inter"), "w") as f:
        f.write("user_id:token\titem_id:token\trating:float\ttimestamp:float\n")
        for u in range(12):
            for t in range(6):
                f.write(f"u{u}\ti{(u + t) % 9}\t4\t{880000000 + 10 * t}\n")
    with open(os.path.join(folder, name, f"{name}.item"), "w") as f:
        f.write("item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n")
        for i in range(9):
            f.write(f"i{i}\tFilm {i}\t199{i}\tComedy Drama\n")
    return folder


@pytest.fixture
def sources(tmp_path):
    data = str(tmp_path / "data")
    write_tiny_dataset(data, "tiny", seed=0)
    write_tiny_dataset(data, "srcA", seed=1, n_items=25)
    write_movies(data)
    return data


def config_of(data, tmp_path, model="LEARN", **keys):
    keys.setdefault("feature_dir", str(tmp_path / "features"))
    return tiny_config(data, tmp_path, **{**SMALL, **keys}) if model == "LEARN" else tiny_config(data, tmp_path, **keys)


def read_atomic(path):
    with open(path, encoding="utf-8") as handle:
        header = handle.readline().rstrip("\n").split("\t")
        return header, [line.rstrip("\n").split("\t") for line in handle if line.strip()]


def test_the_corpus_keeps_its_datasets_apart_and_maps_their_text(sources, tmp_path):
    out = str(tmp_path / "corpus")
    counts = write_corpus({"srcA": os.path.join(sources, "srcA"), "movies": os.path.join(sources, "movies")}, out, "c")
    header, inter = read_atomic(os.path.join(out, "c.inter"))
    assert header == ["user_id:token", "item_id:token", "timestamp:float"]
    # both sources have a user u0 and an item i0: four distinct tokens, never one shared user or item
    assert {"srcA|u0", "movies|u0"} <= {row[0] for row in inter} and {"srcA|i0", "movies|i0"} <= {row[1] for row in inter}
    assert all(split_token(row[0])[0] == split_token(row[1])[0] for row in inter)  # a user's items are its own dataset's
    assert counts["movies"] == {"users": 12, "items": 9, "interactions": 72}
    movies = [row for row in inter if row[0] == "movies|u3"]
    assert [float(r[2]) for r in movies] == sorted(float(r[2]) for r in movies)  # its order kept
    header, items = read_atomic(os.path.join(out, "c.item"))
    assert header == ["item_id:token", "title:token", "brand:token", "categories:token_seq", "description:token"]
    film = next(row for row in items if row[0] == "movies|i3")
    assert film[1:] == ["Film 3 (1993)", "", "Comedy Drama", ""]  # title + year, class -> categories, no brand
    lamp = next(row for row in items if row[0] == "srcA|i0")
    assert lamp[1] == "red lamp model 0" and lamp[2] == "brand0"


def test_the_corpus_is_keyed_by_its_sources_content(sources, tmp_path):
    config = Config(model="LEARN", dataset="tiny", config_dict=config_of(sources, tmp_path))
    first = Corpus(["srcA", "movies"]).ensure(config)
    assert Corpus(["srcA", "movies"]).ensure(config).built is False  # found again by its key
    with open(os.path.join(sources, "movies", "movies.inter"), "a") as f:
        f.write("u0\ti1\t4\t890000000\n")
    second = Corpus(["srcA", "movies"]).ensure(config)
    assert second.built and second.key != first.key and second.path != first.path
    assert Corpus(["movies", "srcA"]).ensure(config).key != second.key  # the order of the sources is their item order
    # a corpus file edited after the build is not the corpus its .json records: rebuilt
    with open(Corpus(["srcA", "movies"]).files(second.path)[0], "a") as f:
        f.write("x|u\tx|i\t1\n")
    assert Corpus(["srcA", "movies"]).ensure(config).built


@pytest.fixture
def pretrained(sources, tmp_path):
    """(config dict, path of the pre-trained LEARN weights on srcA + movies), built by a fine-tuning run of 1 epoch."""
    keys = config_of(sources, tmp_path, pretrain_datasets=["srcA", "movies"], pretrain_epochs=2, pretrain_batch_size=16)
    config = Config(model="LEARN", dataset="tiny", config_dict=keys)
    prepare_artifacts(config)
    return keys, config["pretrained_checkpoint"]


def test_pretrained_weights_are_plain_and_transfer_every_tower_weight(pretrained):
    keys, path = pretrained
    assert os.path.basename(path).startswith("LEARN-pretrained-")
    saved = torch.load(path, weights_only=True)  # nothing in it needs unpickling
    assert saved["model"] == "LEARN" and saved["pretrain_config"]["learn_loss"] == "pretrain"
    assert saved["pretrain_config"]["epochs"] == 2 and saved["dataset"].startswith("corpus-")
    config = Config(model="LEARN", dataset="tiny", config_dict={**keys, "pretrain_datasets": None, "pretrained_checkpoint": path})
    prepare_artifacts(config)
    train = data_preparation(config, create_dataset(config))[0]
    model = get_model("LEARN")(config, train.dataset)
    state = model.state_dict()
    expected = set(transferable_state(type(model), state))
    assert set(saved["state_dict"]) == expected and "content_key" not in expected  # the content table is this dataset's
    assert {"in_proj.weight", "out_proj.weight", "LayerNorm.weight"} <= expected
    assert any(k.startswith("trm_encoder.layer.0.") for k in expected)
    for name, value in saved["state_dict"].items():
        torch.testing.assert_close(state[name], value, msg=name)
    assert model.content.size(0) == train.dataset.item_num  # the target's own items
    scratch = get_model("LEARN")(Config(model="LEARN", dataset="tiny", config_dict={**keys, "pretrain_datasets": None}), train.dataset)
    assert not torch.equal(scratch.in_proj.weight, state["in_proj.weight"])  # loading changed something (negative control)


def test_zero_shot_scores_items_never_trained_on_and_fine_tuning_starts_from_the_weights(pretrained, capsys):
    keys, path = pretrained
    zero = run_recbole_llm(model="LEARN", dataset="tiny", config_dict={**keys, "epochs": 0})
    assert "reusing" in capsys.readouterr().out  # corpus and weights found by their keys, not built again
    assert zero["epochs_run"] == 0 and zero["best_valid_result"] is not None and zero["test_result"]["ndcg@10"] > 0
    from recbole_llm.compat import load_checkpoint

    state = load_checkpoint(zero["model_file"])["state_dict"]
    saved = torch.load(path, weights_only=True)["state_dict"]
    assert all(torch.equal(state[k], v) for k, v in saved.items())  # evaluated as pre-trained: no step on the target
    tuned = run_recbole_llm(model="LEARN", dataset="tiny", config_dict={**keys, "epochs": 1, "learning_rate": 0.01})
    moved = load_checkpoint(tuned["model_file"])["state_dict"]
    assert not torch.equal(moved["in_proj.weight"], saved["in_proj.weight"])


def test_two_pretraining_settings_never_share_weights(sources, tmp_path, pretrained):
    keys, path = pretrained
    for change in ({"pretrain_epochs": 1}, {"pretrain_datasets": ["srcA"]}, {"d_model": 8}, {"pretrain_loss": "dense"},
                   {"llm_pooling": "cls"}):
        config = Config(model="LEARN", dataset="tiny", config_dict={**keys, **change})
        from recbole_llm.data.corpus import ensure_corpus

        name, folder, _ = ensure_corpus(config, config["pretrain_datasets"])
        other = Pretrained(get_model("LEARN"), name, folder, name.rsplit("-", 1)[1])
        assert other.path(config, other.settings(config), other.key(other.settings(config))) != path, change
    same = Config(model="LEARN", dataset="tiny", config_dict={**keys, "seed": 7, "learning_rate": 0.5, "epochs": 3})
    name, folder, _ = ensure_corpus(same, ["srcA", "movies"])
    artifact = Pretrained(get_model("LEARN"), name, folder, name.rsplit("-", 1)[1])
    assert artifact.path(same, artifact.settings(same), artifact.key(artifact.settings(same))) == path  # fine-tuning keys


@pytest.mark.parametrize("change, message", [
    ({"pretrain_datasets": ["tiny"]}, "names the target dataset 'tiny'"),
    ({"pretrain_datasets": ["nowhere"]}, "Unknown dataset 'nowhere'"),
    ({"pretrain_datasets": ["srcA", "srcA"]}, "names srcA twice"),
    ({"pretrain_datasets": ["srcA"], "pca_dim": 4}, "pca_dim"),
    ({"epochs": 0}, "epochs: 0 evaluates a model without training it"),
])
def test_bad_pretraining_keys_are_one_line(sources, tmp_path, change, message):
    with pytest.raises(UserError, match=message) as err:
        config = Config(model="LEARN", dataset="tiny", config_dict=config_of(sources, tmp_path, **change))
        prepare_artifacts(config)
    assert "\n" not in str(err.value)


def test_a_model_that_does_not_transfer_refuses_the_keys(sources, tmp_path):
    for keys in ({"pretrain_datasets": ["srcA"]}, {"pretrained_checkpoint": "x.pth"}):
        with pytest.raises(UserError, match="SASRec does not transfer weights") as err:
            prepare_artifacts(Config(model="SASRec", dataset="tiny", config_dict=config_of(sources, tmp_path, "SASRec", **keys)))
        assert "\n" not in str(err.value)


def test_foreign_and_mismatched_weights_files_are_refused(pretrained, tmp_path):
    keys, path = pretrained
    saved = torch.load(path, weights_only=True)
    plain_keys = {**keys, "pretrain_datasets": None}

    def build_with(file):
        config = Config(model="LEARN", dataset="tiny", config_dict={**plain_keys, "pretrained_checkpoint": file})
        prepare_artifacts(config)
        train = data_preparation(config, create_dataset(config))[0]
        return get_model("LEARN")(config, train.dataset)

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo crafted > " + str(tmp_path / "ran"),))

    cases = {
        "pickled.pth": ({"state_dict": {}, "x": Payload()}, "pickled Python objects"),
        "space.pth": ({**saved, "feature_space": {**saved["feature_space"], "llm_pooling": "cls"}}, "llm_pooling: cls"),
        "other.pth": ({**saved, "model": "UniSRec"}, "weights of a UniSRec, not a LEARN"),
        "partial.pth": ({**saved, "state_dict": {k: v for k, v in saved["state_dict"].items() if k != "out_proj.weight"}},
                        r"lacks weights of this LEARN: \['out_proj.weight'\]"),
    }
    for name, (content, message) in cases.items():
        torch.save(content, str(tmp_path / name))
        with pytest.raises(UserError, match=message) as err:
            build_with(str(tmp_path / name))
        assert "\n" not in str(err.value), name
    assert not os.path.exists(tmp_path / "ran")
    build_with(path)  # the sound file loads (control)


def test_fine_tuning_rows_of_towers_a_and_b_share_one_pre_training(sources, tmp_path, pretrained):
    keys, path = pretrained  # item_tower a (the default), pretrain_loss: pretrain (one target: a and b train the same)
    from recbole_llm.data.corpus import ensure_corpus

    def weights_path(**change):
        config = Config(model="LEARN", dataset="tiny", config_dict={**keys, **change})
        name, folder, _ = ensure_corpus(config, ["srcA", "movies"])
        artifact = Pretrained(get_model("LEARN"), name, folder, name.rsplit("-", 1)[1])
        return artifact.path(config, artifact.settings(config), artifact.key(artifact.settings(config)))

    assert weights_path(item_tower="b", learn_loss="catalogue", n_target_samples=3) == path
    assert weights_path(item_tower="c") != path
    assert weights_path(item_tower="b", pretrain_loss="dense") != weights_path(item_tower="a", pretrain_loss="dense")


def test_a_run_handed_its_pretrained_weights_uses_them_without_feature_dir(sources, tmp_path, capsys):
    """The benchmark's path (prepare_runs: shared_artifact_keys here, the run with the keys it returns): the run is
    handed the target's feature folder as feature_dir, which is not where the parent put the corpus; it must start
    from the weights built for it, not pre-train again elsewhere or refuse both keys (a suite's pre-trained rows all
    failed so before)."""
    from recbole_llm.quick_start import shared_artifact_keys

    keys = config_of(sources, tmp_path, pretrain_datasets=["srcA", "movies"], pretrain_epochs=1, pretrain_batch_size=16)
    keys.pop("feature_dir")  # the default folders: the features beside the data, the corpus one level up
    shared = shared_artifact_keys(Config(model="LEARN", dataset="tiny", config_dict=dict(keys)))
    path = shared["pretrained_checkpoint"]
    assert os.path.isfile(path) and os.path.basename(path) in shared["artifact_keys"]
    assert os.path.dirname(shared["feature_dir"]) != shared["feature_dir"]  # the handed folder is the target's own
    capsys.readouterr()
    result = run_recbole_llm(model="LEARN", dataset="tiny", config_dict={**keys, **shared, "epochs": 0})
    out = capsys.readouterr().out
    assert "pre-training: LEARN on" not in out and result["epochs_run"] == 0
    from recbole_llm.compat import load_checkpoint

    state = load_checkpoint(result["model_file"])["state_dict"]
    saved = torch.load(path, weights_only=True)["state_dict"]
    assert all(torch.equal(state[k], v) for k, v in saved.items())  # the handed weights, as they are
    torch.save({**torch.load(path, weights_only=True), "cache_key": "0" * 16}, path)  # rebuilt with other settings since
    with pytest.raises(UserError, match="records cache key"):
        run_recbole_llm(model="LEARN", dataset="tiny", config_dict={**keys, **shared, "epochs": 0})


def test_unisrec_item_drop_keeps_order_first_item_and_padding():
    from recbole_llm.model.sequential_recommender.unisrec import item_drop

    torch.manual_seed(0)
    seq = torch.tensor([[5, 6, 7, 8, 9, 0, 0], [3, 0, 0, 0, 0, 0, 0], [1, 2, 3, 4, 5, 6, 7]])
    lengths = torch.tensor([5, 1, 7])
    for _ in range(20):
        aug, aug_len = item_drop(seq, lengths, 0.5)
        for row in range(3):
            kept = aug[row, : aug_len[row]].tolist()
            assert kept[0] == seq[row, 0] and 1 <= len(kept) <= lengths[row]
            assert kept == [i for i in seq[row, : lengths[row]].tolist() if i in kept]  # a subsequence, in order
            assert not aug[row, aug_len[row]:].any()
    assert torch.equal(item_drop(seq, lengths, 0.0)[0], seq)
    assert (item_drop(seq, lengths, 0.9)[1] < lengths).any()  # it drops something


def unisrec_keys(sources, tmp_path, **keys):
    return tiny_config(sources, tmp_path, **{"feature_dir": str(tmp_path / "features"), "pretrain_datasets": ["srcA", "movies"],
                                             "pretrain_epochs": 2, "pretrain_batch_size": 16, "n_exps": 2, **keys})


def test_unisrec_pretrains_with_both_contrastive_terms_and_fine_tunes_either_stage(sources, tmp_path, capsys):
    """UniSRec's multi-domain stage: train_stage: pretrain on the corpus (seq-item + seq-seq), plain weights that
    transfer the adaptor and the encoder to an inductive and a transductive target (one pre-training for both), and
    zero-shot scores the target's items from their text."""
    keys = unisrec_keys(sources, tmp_path)
    zero = run_recbole_llm(model="UniSRec", dataset="tiny", config_dict={**keys, "epochs": 0})
    out = capsys.readouterr().out
    assert "pre-training: UniSRec on corpus-" in out and zero["epochs_run"] == 0 and zero["test_result"]["ndcg@10"] > 0
    config = Config(model="UniSRec", dataset="tiny", config_dict=keys)
    prepare_artifacts(config)
    path = config["pretrained_checkpoint"]
    saved = torch.load(path, weights_only=True)
    assert saved["model"] == "UniSRec" and saved["pretrain_config"]["train_stage"] == "pretrain"
    assert saved["pretrain_config"]["seq_seq_lambda"] == 0.001
    assert any(k.startswith("moe_adaptor.") for k in saved["state_dict"]) and "item_embedding.weight" not in saved["state_dict"]
    for stage in ("inductive_ft", "transductive_ft"):
        staged = Config(model="UniSRec", dataset="tiny", config_dict={**keys, "train_stage": stage})
        prepare_artifacts(staged)
        assert staged["pretrained_checkpoint"] == path, stage  # the target's stage is not in the pre-training's key
        train = data_preparation(staged, create_dataset(staged))[0]
        state = get_model("UniSRec")(staged, train.dataset).state_dict()
        for name, value in saved["state_dict"].items():
            torch.testing.assert_close(state[name], value, msg=name)
    other = Config(model="UniSRec", dataset="tiny", config_dict={**keys, "seq_seq_lambda": 0.5})
    prepare_artifacts(other)
    assert other["pretrained_checkpoint"] != path  # the pre-training's own keys are in its key


def test_unisrec_pretrain_loss_has_the_seq_seq_term(tiny_data, tmp_path):
    from recbole_llm.model.sequential_recommender.unisrec import UniSRec
    from tests.conftest import rand_features_config

    def loss_of(**keys):
        config = Config(model="UniSRec", dataset="tiny", config_dict=rand_features_config(tiny_data, tmp_path, train_stage="pretrain", **keys))
        prepare_artifacts(config)
        train = data_preparation(config, create_dataset(config))[0]
        torch.manual_seed(0)
        model = get_model("UniSRec")(config, train.dataset)
        assert isinstance(model, UniSRec) and not hasattr(model, "item_embedding")  # text only
        batch = next(iter(train))
        torch.manual_seed(1)
        loss = model.calculate_loss(batch)
        loss.backward()
        assert torch.isfinite(loss) and model.moe_adaptor.experts[0].lin.weight.grad.abs().sum() > 0
        return float(loss.detach())

    base = loss_of(seq_seq_lambda=0.0)
    assert loss_of(seq_seq_lambda=1.0) > base + 1e-3  # the seq-seq InfoNCE adds a positive term
    with pytest.raises(UserError, match="item_drop_ratio"):
        loss_of(item_drop_ratio=1.0)


def test_sources_are_found_in_the_given_data_path_when_the_target_lives_elsewhere(sources, tmp_path):
    """ml-100k resolves to the copy inside the recbole wheel; the sources are looked for in the --data_path the user
    gave first (the documented ml-100k command failed with 'Unknown dataset' before)."""
    config = Config(model="LEARN", dataset="ml-100k", config_dict=config_of(sources, tmp_path, pretrain_datasets=["srcA"]))
    assert os.path.dirname(config["data_path"]) != os.path.abspath(sources)  # the wheel's copy
    assert Corpus(["srcA"]).sources(config) == {"srcA": os.path.join(os.path.abspath(sources), "srcA")}
    with pytest.raises(UserError, match="Unknown dataset 'nowhere'"):
        Corpus(["nowhere"]).sources(config)
