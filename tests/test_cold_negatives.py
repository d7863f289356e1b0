"""Cold-start items are never a training negative: no loss path gives a cold item a gradient (recbole_llm/data/cold.py).

Each case builds a tiny model under the protocol, takes one training step's loss and gradients, perturbs the cold
items' text (or ID rows), and takes them again: identical. The negative control is the same model without
``exclude_cold_items_from_loss``: then the perturbation moves the loss, so each case can fail.
"""

import types

import pytest
import torch
from conftest import rand_features_config, write_tiny_dataset

from recbole_llm import Config, create_dataset, get_model
from recbole_llm.data.cold import ColdItemError, ColdMaskedCrossEntropyLoss, exclude_cold_items_from_loss
from recbole_llm.utils import data_preparation

S3REC = {"load_col": {"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id", "categories"]},
         "item_attribute": "categories", "train_mode": "prefix", "pretrain_rows": "prefix", "pretrain_epochs": 1}
LEARN_SMALL = {"d_model": 16, "inner_size": 32, "embedding_dim": 8, "n_heads": 2, "n_history_samples": 3, "n_target_samples": 2}


def text(model):
    return model.item_embedding.features


CASES = {  # name: (model, config overrides, the per-item rows a cold item's perturbation changes)
    "LEARN catalogue": ("LEARN", dict(LEARN_SMALL, learn_loss="catalogue", item_tower="b"), lambda m: m.content),
    "LEARN dense, random negatives": ("LEARN", dict(LEARN_SMALL, item_tower="a", learn_random_negatives=50), lambda m: m.content),
    "LLMEmbSASRec CE": ("LLMEmbSASRec", {"align_alpha": 0.0}, text),
    "LLMEmbBERT4Rec CE": ("LLMEmbBERT4Rec", {"align_alpha": 0.0}, text),  # its table has a mask-token row more
    "LLMESRGRU4Rec CE": ("LLMESRGRU4Rec", {"llmesr_alpha": 0.0, "hidden_size": 8, "embedding_size": 8},
                         lambda m: m.item_embedding.llm_embedding.features),
    "UniSRec CE": ("UniSRec", {"train_mode": "prefix"}, lambda m: m.plm_embedding),
    "SASRec SSM": ("SASRec", {"loss_type": "SSM", "ssm_negatives": 50}, lambda m: m.item_embedding.weight),
    "S3Rec pre-training": ("S3Rec", S3REC, lambda m: m.item_embedding.weight),
    "S3Rec fine-tuning CE": ("S3Rec", dict(S3REC, fine_tuned=True), lambda m: m.item_embedding.weight),  # logits 1 wider
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_tiny_dataset(str(tmp_path_factory.mktemp("cold_negatives") / "data"), n_users=60, max_len=14)


def build(data, tmp_path, model_name, overrides, masked):
    """(cold items, a training batch, the model) as quick_start builds them; ``masked=False``: no cold exclusion."""
    from recbole_llm.quick_start import prepare_artifacts
    from recbole_llm.utils import get_trainer

    overrides = {"train_mode": "all_positions", "MAX_ITEM_LIST_LENGTH": 6, "cold_item_ratio": 0.2, **overrides}
    fine_tuned = overrides.pop("fine_tuned", False)
    config = Config(model=model_name, dataset="tiny", config_dict=rand_features_config(data, tmp_path, **overrides))
    prepare_artifacts(config)
    dataset = create_dataset(config)
    train, valid, _ = data_preparation(config, dataset)
    torch.manual_seed(0)
    model = get_model(model_name)(config, train.dataset)
    if masked or fine_tuned:
        assert exclude_cold_items_from_loss(model, train.dataset)  # as quick_start does
    if fine_tuned:  # S3Rec's trainer pre-trains, then builds the fine-tuning model itself
        trainer = get_trainer(config["MODEL_TYPE"], model_name)(config, model)
        trainer.fit(train, valid, saved=False)
        model = trainer.model
        assert model.train_stage == "finetune"
        if not masked:
            model.loss_fct = torch.nn.CrossEntropyLoss()
    return dataset.cold_items, next(iter(train)), model


def loss_and_grads(model, batch):
    model.train()
    model.zero_grad()
    torch.manual_seed(1)  # the same dropout, masks and sampled negatives
    if hasattr(model, "_generator"):
        model._generator.manual_seed(1)  # LEARN's target positions
    loss = model.calculate_loss(batch)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def perturbed(model, batch, rows, cold):
    """(loss, grads) before and after the cold items' rows of ``rows`` change."""
    before = loss_and_grads(model, batch)
    with torch.no_grad():  # random, not a constant shift: a LayerNorm'd state is orthogonal to (1, ..., 1)
        rows[: len(cold)][cold] += 5.0 * torch.randn(int(cold.sum()), rows.size(1), generator=torch.Generator().manual_seed(0))
    return before, loss_and_grads(model, batch)


@pytest.mark.parametrize("case", list(CASES))
def test_a_cold_items_text_changes_no_loss_and_no_gradient(data, tmp_path, case):
    model_name, overrides, rows = CASES[case]
    cold, batch, model = build(data, tmp_path, model_name, overrides, masked=True)
    (loss, grads), (again, grads_again) = perturbed(model, batch, rows(model), cold)
    assert torch.isfinite(loss) and grads
    assert torch.equal(loss, again)
    assert grads.keys() == grads_again.keys() and all(torch.equal(grads[n], grads_again[n]) for n in grads)

    # the negative control: without the protocol's exclusion the same perturbation reaches the loss
    cold, batch, model = build(data, tmp_path, model_name, overrides, masked=False)
    (loss, _), (again, _) = perturbed(model, batch, rows(model), cold)
    assert not torch.equal(loss, again)


def test_masked_cross_entropy_maps_columns_to_items_whatever_the_width():
    cold = torch.tensor([False, False, True, False, True])
    loss = ColdMaskedCrossEntropyLoss(cold, torch.nn.CrossEntropyLoss())
    target = torch.tensor([0, 1, 3, 5])
    wide = torch.randn(4, 6)  # a mask-token column more: never cold
    keep = torch.tensor([0, 1, 3, 5])
    reference = torch.nn.functional.cross_entropy(wide[:, keep], torch.tensor([0, 1, 2, 3]))
    torch.testing.assert_close(loss(wide, target), reference)
    # (N, C, L): the class dimension is 1, not the last one
    sequence = torch.randn(4, 5, 3)
    targets = torch.tensor([[0, 1, 3], [3, 3, 0], [1, 0, 1], [0, 3, 3]])
    warm_column = torch.tensor([0, 1, -1, 2, -1])  # item -> column among the warm items 0, 1, 3
    reference = torch.nn.functional.cross_entropy(sequence[:, [0, 1, 3]], warm_column[targets])
    torch.testing.assert_close(loss(sequence, targets), reference)
    with pytest.raises(ColdItemError, match="cold_item_ratio.*4 columns, fewer than the 5 items"):
        loss(torch.randn(4, 4), torch.tensor([0, 1, 3, 3]))
    with pytest.raises(ColdItemError, match="label_smoothing"):
        ColdMaskedCrossEntropyLoss(cold, torch.nn.CrossEntropyLoss(label_smoothing=0.1))


@pytest.mark.parametrize("loss_type", ["BPR", "BCE"])
def test_one_negative_losses_are_refused_under_the_protocol(loss_type):
    dataset = types.SimpleNamespace(cold_items=torch.tensor([False, True, False]))
    with pytest.raises(ColdItemError, match=f"'loss_type' is {loss_type}.*use loss_type CE or SSM"):
        exclude_cold_items_from_loss(types.SimpleNamespace(loss_type=loss_type), dataset)
    off = types.SimpleNamespace(cold_items=None)
    assert not exclude_cold_items_from_loss(types.SimpleNamespace(loss_type=loss_type), off)  # protocol off: no-op
