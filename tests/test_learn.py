"""LEARN: sampling weights, dense all-action loss, causal PAL, towers, samplers, export round trip."""

import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config, assert_reproduces

from recbole_llm import Config, create_dataset, get_model, run_recbole_llm
from recbole_llm.llm.features import load_features
from recbole_llm.model.sequential_recommender.learn import catalogue_loss, dense_all_action_loss, recency_weights, two_stage_sample
from recbole_llm.utils import data_preparation

SMALL = {"n_layers": 1, "n_heads": 2, "d_model": 16, "inner_size": 32, "embedding_dim": 8, "n_history_samples": 3, "n_target_samples": 2}


def learn_config(tiny_data, tmp_path, **overrides):
    overrides.setdefault("feature_dir", str(tmp_path / "features"))
    return tiny_config(tiny_data, tmp_path, **{**SMALL, **overrides})


def test_recency_weights_formula():
    w = recency_weights(3, alpha=10, beta=10000)
    expected = [math.log(10), math.log(10 + 1 * (10000 - 10) / 2), math.log(10000)]
    assert w.tolist() == pytest.approx([e / expected[-1] for e in expected], rel=1e-6)
    assert recency_weights(1).tolist() == [1.0]


def test_two_stage_sampling_prefers_recent_positions():
    assert two_stage_sample(4, 10) == [0, 1, 2, 3]
    rng = random.Random(0)
    gen = torch.Generator().manual_seed(0)
    recency = [p for _ in range(400) for p in two_stage_sample(100, 5, "recency", rng=rng, generator=gen)]
    uniform = [p for _ in range(400) for p in two_stage_sample(100, 5, "uniform", rng=rng)]
    sample = two_stage_sample(100, 5, "recency", rng=rng, generator=gen)
    assert len(set(sample)) == 5 and sample == sorted(sample)
    assert np.mean(recency) > np.mean(uniform) + 3


def test_dense_loss_hand_example_with_masked_duplicates():
    s = 1 / math.sqrt(2)
    users = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])  # B=2, Nh=1
    targets = torch.tensor([[[1.0, 0.0], [s, s]], [[0.0, 1.0], [s, s]]])  # B=2, Nt=2
    items = torch.tensor([[5, 7], [6, 7]])  # item 7 is a target of both users
    ones = torch.ones(2, 2, dtype=torch.bool)
    tau = 0.5
    loss = dense_all_action_loss(users, torch.ones(2, 1, dtype=torch.bool), targets, items, ones, tau)
    # user 0: positives 5 (cos 1) and 7 (cos s); negatives: user 1's item 6 (cos 0), item 7 masked (own target)
    def term(pos, negs):
        return -(pos / tau - math.log(math.exp(pos / tau) + sum(math.exp(n / tau) for n in negs)))

    expected = (term(1.0, [0.0]) + term(s, [0.0]) + term(1.0, [0.0]) + term(s, [0.0])) / 4
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # without the duplicate, the shared item would count as a negative and the loss grows
    loss_unmasked = dense_all_action_loss(users, torch.ones(2, 1, dtype=torch.bool), targets, torch.tensor([[5, 7], [6, 8]]), ones, tau)
    assert loss_unmasked.item() > loss.item()
    # padded target slots contribute nothing
    partial = torch.tensor([[True, False], [True, False]])
    only_first = dense_all_action_loss(users, torch.ones(2, 1, dtype=torch.bool), targets, items, partial, tau)
    assert only_first.item() == pytest.approx(term(1.0, [0.0]), rel=1e-5)


def test_dense_loss_random_negatives_join_the_denominator_except_own_targets():
    users = torch.tensor([[[1.0, 0.0]]])  # B=1: no in-batch negatives at all
    targets = torch.tensor([[[1.0, 0.0]]])
    items = torch.tensor([[5]])
    mask = torch.ones(1, 1, dtype=torch.bool)
    tau = 0.5
    extra = torch.tensor([[0.0, 1.0], [1.0, 0.0], [-1.0, 0.0]])
    extra_items = torch.tensor([9, 5, 11])  # item 5 is the user's own target: masked
    loss = dense_all_action_loss(users, mask, targets, items, mask, tau, extra, extra_items)
    expected = -(1 / tau - math.log(math.exp(1 / tau) + math.exp(0.0) + math.exp(-1 / tau)))
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert dense_all_action_loss(users, mask, targets, items, mask, tau).item() == pytest.approx(0.0, abs=1e-6)


def build(tiny_data, tmp_path, **overrides):
    config = Config(model="LEARN", dataset="tiny", config_dict=learn_config(tiny_data, tmp_path, **overrides))
    from recbole_llm.quick_start import prepare_artifacts

    prepare_artifacts(config)
    dataset = create_dataset(config)
    train, valid, test = data_preparation(config, dataset)
    return config, train, get_model("LEARN")(config, train.dataset)


def test_catalogue_loss_is_a_softmax_over_every_item():
    users = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    table = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])  # items 1, 2, 3
    targets = torch.tensor([1, 3])
    tau = 0.5
    def term(pos, others):
        return -(pos / tau - math.log(sum(math.exp(x / tau) for x in [pos, *others])))

    expected = (term(1.0, [0.0, -1.0]) + term(0.0, [0.0, 1.0])) / 2
    assert catalogue_loss(users, table, targets, tau).item() == pytest.approx(expected, rel=1e-6)


def test_catalogue_loss_draws_a_target_position_and_reaches_items_outside_the_batch(tiny_data, tmp_path):
    config, train, model = build(tiny_data, tmp_path, learn_loss="catalogue", item_tower="b")
    model.train()
    batch = next(iter(train))  # the three longest users of the first (shuffled) batch: most items are in none of them
    interaction = batch[batch[model.ITEM_SEQ_LEN].argsort(descending=True)[:3]]
    seq_len = interaction[model.ITEM_SEQ_LEN].long() + 1  # the whole training sequence of each row
    cuts = torch.stack([model.build_batch(interaction)[1] for _ in range(30)])
    assert bool(((cuts >= 1) & (cuts <= seq_len - 1)).all())
    long_rows = seq_len >= 4
    assert bool((cuts[:, long_rows].unique(dim=0).size(0) > 1))  # a new draw per step, not a fixed split
    hist, cut, pos, _, tgt, *_ = model.build_batch(interaction)
    full = torch.cat([interaction[model.ITEM_SEQ][:, :1], interaction[model.TARGET_SEQ]], dim=1)
    assert torch.equal(tgt[:, 0], full.gather(1, cut.unsqueeze(1)).squeeze(1))  # the item right after the history
    assert torch.equal(pos[:, 0], cut - 1)
    # an item no row of the batch holds still moves the loss: every item is a negative (next_item: batch only)
    in_batch = set(full.flatten().tolist())
    outside = next(i for i in range(1, model.n_items) if i not in in_batch)
    def loss_with(content):
        model.content = content
        torch.manual_seed(0)
        model._generator.manual_seed(0)
        return model.calculate_loss(interaction).item()

    base = model.content.clone()
    changed = base.clone()
    changed[outside] = -changed[outside]
    assert loss_with(base) != pytest.approx(loss_with(changed), rel=1e-6)


def test_catalogue_loss_refuses_random_negatives(tiny_data, tmp_path):
    with pytest.raises(ValueError, match="learn_random_negatives"):
        build(tiny_data, tmp_path, learn_loss="catalogue", learn_random_negatives=4)


def test_pal_is_causal(tiny_data, tmp_path):
    _, _, model = build(tiny_data, tmp_path)
    model.eval()
    seq = torch.tensor([[3, 4, 5, 6, 7]])
    changed = torch.tensor([[3, 4, 5, 9, 10]])
    with torch.no_grad():
        a, b = model.pal_states(seq), model.pal_states(changed)
    torch.testing.assert_close(a[:, :3], b[:, :3])  # positions 0..2 never see positions 3..4
    assert not torch.allclose(a[:, 3:], b[:, 3:])
    assert torch.allclose(a.norm(dim=-1), torch.ones(1, 5))


@pytest.mark.parametrize(
    "tower,sampler,loss,negatives",
    [("a", "recency", "dense", 0), ("b", "uniform", "dense", 0), ("c", "recency", "dense", 0), ("a", "recency", "next_item", 0), ("a", "recency", "dense", 16), ("b", "recency", "catalogue", 0)],
)
def test_towers_and_samplers_train(tiny_data, tmp_path, tower, sampler, loss, negatives):
    result = run_recbole_llm(
        model="LEARN",
        dataset="tiny",
        config_dict=learn_config(tiny_data, tmp_path, item_tower=tower, sampler=sampler, learn_loss=loss, learn_random_negatives=negatives, epochs=2),
    )
    assert "ndcg_tail@10" in result["test_result"]
    assert_reproduces(result)


def test_item_tower_variants_embed_single_items(tiny_data, tmp_path):
    _, _, model = build(tiny_data, tmp_path, item_tower="c")
    model.eval()
    table = model.item_table()
    expected = F.normalize(model.content @ model.content_projection, dim=-1)
    torch.testing.assert_close(table, expected)
    _, _, model_b = build(tiny_data, tmp_path, item_tower="b")
    model_b.eval()
    items = torch.tensor([2, 5])
    torch.testing.assert_close(model_b.item_table()[items], model_b.pal_states(items.view(-1, 1)).squeeze(1))


def test_bad_item_tower(tiny_data, tmp_path):
    with pytest.raises(ValueError, match="item_tower"):
        build(tiny_data, tmp_path, item_tower="d")


def test_export_round_trip(tiny_data, tmp_path):
    from recbole_llm.compat import load_checkpoint
    from recbole_llm.export import full_histories, main

    result = run_recbole_llm(model="LEARN", dataset="tiny", config_dict=learn_config(tiny_data, tmp_path, epochs=1))
    out = tmp_path / "export"
    assert main([f"--model_file={result['model_file']}", f"--out={out}"]) == 0
    user_tokens, users, meta = load_features(str(out / "users"))
    item_tokens, items, _ = load_features(str(out / "items"))
    assert meta["model"] == "LEARN" and len(user_tokens) == 40 and users.shape == (40, 8)
    assert len(item_tokens) == 30 and items.shape == (30, 8)
    assert np.allclose(np.linalg.norm(items, axis=1), 1.0, atol=1e-5)
    # the exported vectors reproduce the model's scores
    checkpoint = load_checkpoint(result["model_file"])
    config = checkpoint["config"]
    dataset = create_dataset(config)
    train, _, test = data_preparation(config, dataset)
    model = get_model("LEARN")(config, train.dataset)
    model.load_state_dict(checkpoint["state_dict"])
    model.eval()
    seq, seq_len = full_histories(test._dataset, config["MAX_ITEM_LIST_LENGTH"])
    with torch.no_grad():
        scores = model.forward(seq[:1], seq_len[:1]) @ model.item_table()[1:].t()
    np.testing.assert_allclose(scores.numpy()[0], items @ users[0], rtol=1e-4, atol=1e-5)
    assert main(["--model_file=/nowhere.pth", f"--out={out}"]) == 2


@pytest.mark.parametrize("sampler", ["recency", "uniform"])
def test_batched_two_stage_sampler_has_the_distribution_of_the_formula(sampler):
    """The vectorised sampler picks each position as often as the per-row reference (two_stage_sample)."""
    from recbole_llm.model.sequential_recommender.learn import two_stage_sample_batch

    n, k, draws = 20, 3, 20000
    rng, gen = random.Random(1), torch.Generator().manual_seed(1)
    reference = np.zeros(n)
    for _ in range(draws):
        reference[two_stage_sample(n, k, sampler, rng=rng, generator=gen)] += 1
    index, mask = two_stage_sample_batch(torch.full((draws,), n), k, sampler, generator=torch.Generator().manual_seed(2))
    assert mask.all() and (index.diff(dim=1) > 0).all()  # k distinct positions, sorted
    batched = np.bincount(index.view(-1).numpy(), minlength=n)
    np.testing.assert_allclose(batched / draws, reference / draws, atol=0.02)
    if sampler == "recency":
        assert batched[-5:].sum() > 1.5 * batched[:5].sum()  # recent positions preferred


def test_batched_sampler_short_rows_and_masks():
    from recbole_llm.model.sequential_recommender.learn import two_stage_sample_batch

    index, mask = two_stage_sample_batch(torch.tensor([2, 5, 1]), 3, generator=torch.Generator().manual_seed(0))
    assert mask.tolist() == [[True, True, False], [True, True, True], [True, False, False]]
    assert index[0, :2].tolist() == [0, 1] and index[2, 0].item() == 0
    assert set(index[1].tolist()) <= set(range(5)) and len(set(index[1].tolist())) == 3


def test_transformer_layers_start_from_their_own_weights(tiny_data, tmp_path):
    """RecBole's TransformerEncoder deep-copies one layer: our LEARN (no _init_weights) started with n identical
    layers. Each layer is drawn on its own now, with PyTorch's default initialisation (the public BertEncoder's)."""
    _, _, model = build(tiny_data, tmp_path, n_layers=3)
    layers = model.trm_encoder.layer
    for name, first in layers[0].named_parameters():
        if first.dim() == 2:  # matrices differ between layers (LayerNorms start at 1 / 0 everywhere)
            assert all(not torch.equal(first, dict(other.named_parameters())[name]) for other in layers[1:]), name
    query = layers[0].multi_head_attention.query.weight
    bound = 1 / math.sqrt(query.size(1))  # nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert query.abs().max() <= bound and query.abs().max() > 0.9 * bound
