"""The hooks the LLM mixins rely on are declared once (recbole_llm/model/hooks.py) and every backbone and every LLM
model class provides them (issue 30, item 5)."""

import pytest
from conftest import tiny_config

from recbole_llm.model.hooks import ItemTableBackbone, SequentialBackbone, missing_hooks
from recbole_llm.utils import plugin_models

BACKBONES = {"SASRec": ItemTableBackbone, "GRU4Rec": SequentialBackbone, "BERT4Rec": SequentialBackbone}
LLM_PREFIXES = ("LLMEmb", "LLMESR", "LLM2X")


def llm_model_names():
    return sorted(name for name in plugin_models() if name.startswith(LLM_PREFIXES))


def test_every_llm_model_is_covered():
    expected = {f"{p}{b}" for p in LLM_PREFIXES for b in BACKBONES} - {"LLM2XGRU4Rec"}
    assert set(llm_model_names()) == expected


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_backbones_declare_and_implement_the_hooks(name):
    model_class = plugin_models()[name]
    assert issubclass(model_class, BACKBONES[name])
    assert missing_hooks(model_class) == []


@pytest.mark.parametrize("name", llm_model_names())
def test_llm_models_have_every_hook_their_mixins_need(name):
    model_class = plugin_models()[name]
    backbone = next(b for b in BACKBONES if name.endswith(b))
    assert issubclass(model_class, BACKBONES[backbone])
    assert missing_hooks(model_class) == []
    declared = [getattr(klass, "backbone_hooks", None) for klass in model_class.__mro__ if "backbone_hooks" in vars(klass)]
    assert declared, f"{name}: no mixin declares the backbone hooks it needs"


def test_a_missing_hook_is_named():
    from recbole_llm.model.adapters import LLMEmbMixin
    from recbole_llm.model.cold_id import ColdIdMixin

    class NoEncodeAll(SequentialBackbone):
        def user_embeddings(self, item_seq, item_seq_len):
            return item_seq

    class Incomplete(ColdIdMixin, LLMEmbMixin, NoEncodeAll):
        pass

    assert missing_hooks(Incomplete) == [
        "encode_all",
        "ColdIdMixin.model_hooks: cold_id_content",
        "LLMEmbMixin.backbone_hooks: calculate_loss",
    ]
    with pytest.raises(TypeError, match="encode_all"):
        Incomplete()


def build(model_name, config_dict):
    from recbole_llm import Config, create_dataset, get_model
    from recbole_llm.quick_start import prepare_artifacts
    from recbole_llm.utils import data_preparation

    config = Config(model=model_name, dataset="tiny", config_dict=config_dict)
    prepare_artifacts(config)
    train, _, _ = data_preparation(config, create_dataset(config))
    return train, get_model(model_name)(config, train.dataset).eval()


@pytest.mark.parametrize("name", ["SASRec", "GRU4Rec", "BERT4Rec", "LLMESRBERT4Rec"])
def test_the_added_hooks_are_what_was_read_before(name, tiny_data, tmp_path):
    """user_embeddings of SASRec/GRU4Rec is forward (what export read before); BERT4Rec's encode_all is its forward."""
    import torch
    from conftest import rand_features_config

    config = rand_features_config(tiny_data, tmp_path, llmesr_alpha=0.0, id_init="random") if name.startswith("LLM") else None
    train, model = build(name, config or tiny_config(tiny_data, tmp_path))
    batch = next(iter(train))
    batch = batch[0] if isinstance(batch, tuple) else batch
    seq, lens = batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN]
    with torch.no_grad():
        if "BERT4Rec" in name:
            assert torch.equal(model.encode_all(seq, lens), model.forward(seq))
        else:
            assert torch.equal(model.user_embeddings(seq, lens), model.forward(seq, lens))
