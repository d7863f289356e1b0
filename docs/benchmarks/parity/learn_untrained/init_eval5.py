"""Test N@10 of our LEARN with the parity config before any training step (the official log's first evaluation)."""
import json, sys
from logging import getLogger
from recbole_llm import Config
from recbole_llm.quick_start import build_dataset_and_model, prepare_artifacts
from recbole_llm.utils import get_trainer
from recbole.utils import init_seed

keys = json.load(open("/work/runs/learn_scientific_e2/runs/scientific/ours/42.json"))["keys"]
keys.pop("model")
keys.update(learn_loss=sys.argv[1], seed=int(sys.argv[2]) if len(sys.argv) > 2 else 42, data_path="/work/shared/datasets", state="WARNING", show_progress=False,
            eval_args={"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full", "group_by": "user"})
if sys.argv[1] == "catalogue":
    keys.update(item_tower="b", train_batch_size=64)
config = Config(model="LEARN", dataset="scientific", config_dict=keys)
init_seed(config["seed"], config["reproducibility"])
prepare_artifacts(config)
dataset, model, (train, valid, test) = build_dataset_and_model(config, getLogger())
import torch, torch.nn as nn, torch.nn.functional as F
from transformers import BertConfig
BertConfig.from_pretrained = classmethod(lambda cls, *a, **k: cls())
sys.path.insert(0, "/tmp/official/learn/src")
from model.LEARN import PreferenceAlignmentModule
print("ours std query", float(model.trm_encoder.layer[0].multi_head_attention.query.weight.std()), "in_proj", float(model.in_proj.weight.std()), "out", float(model.out_proj.weight.std()), file=sys.stderr)
if len(sys.argv) > 3 and sys.argv[3] == "copy":
    torch.manual_seed(config["seed"])
    off = PreferenceAlignmentModule(4096, 4096, num_layers=4).eval()
    print("official std query", float(off.summary_encoder.layer[0].attention.self.query.weight.std()), file=sys.stderr)
    d = model.content.size(1)
    with torch.no_grad():
        model.in_proj.weight.copy_(off.adaptor.weight[:, :d]); model.in_proj.bias.copy_(off.adaptor.bias)
        model.out_proj.weight.copy_(off.mlp[0].weight); model.out_proj.bias.copy_(off.mlp[0].bias)
        model.LayerNorm = nn.Identity()
        for ol, ml in zip(off.summary_encoder.layer, model.trm_encoder.layer):
            a, f = ml.multi_head_attention, ml.feed_forward
            pairs = [(ol.attention.self.query, a.query), (ol.attention.self.key, a.key), (ol.attention.self.value, a.value),
                     (ol.attention.output.dense, a.dense), (ol.attention.output.LayerNorm, a.LayerNorm),
                     (ol.intermediate.dense, f.dense_1), (ol.output.dense, f.dense_2), (ol.output.LayerNorm, f.LayerNorm)]
            for o, m_ in pairs:
                m_.weight.copy_(o.weight); m_.bias.copy_(o.bias)
model.eval()
tot = {"nomask": 0.0, "mask": 0.0, "pess": 0.0, "n": 0}; ties = 0
with torch.no_grad():
    for inter, hist_idx, pos_u, pos_i in test:
        scores = model.full_sort_predict(inter).view(len(inter), -1).clone()
        scores[:, 0] = -1e9
        tgt = inter[model.ITEM_ID]
        for name in ("nomask", "mask"):
            sc = scores.clone()
            if name == "mask":
                seq = inter[model.ITEM_SEQ]
                rows = torch.arange(len(sc)).unsqueeze(1).expand_as(seq)
                sc[rows[seq > 0], seq[seq > 0]] = -1e9
            pred = sc[torch.arange(len(sc)), tgt].unsqueeze(1)
            rank = (pred < sc).sum(1).float()
            if name == "nomask":
                ties += int(((pred == sc).sum(1) > 1).sum())
                prank = ((pred <= sc).sum(1) - 1).float()
                tot["pess"] += float(((prank < 10).float() / torch.log2(prank + 2)).sum())
                eq = (pred == sc).sum(1)
                if tot["n"] == 0: print("tie group sizes", eq[eq > 1][:20].tolist(), file=sys.stderr)
            tot[name] += float(((rank < 10).float() / torch.log2(rank + 2)).sum())
        tot["n"] += len(inter)
print("ties", int(ties), {k: v / tot["n"] for k, v in tot.items() if k != "n"}, tot["n"], file=sys.stderr)
trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
trainer.eval_collector.data_collect(train)
print("trainer", trainer.evaluate(test, load_best_model=False)["ndcg@10"], file=sys.stderr)
raise SystemExit
trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
trainer.eval_collector.data_collect(train)
print(json.dumps({k: float(v) for k, v in trainer.evaluate(test, load_best_model=False).items()}))
