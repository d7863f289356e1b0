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
import torch, torch.nn as nn
variant = sys.argv[3] if len(sys.argv) > 3 else ""
if "A" in variant:
    model.LayerNorm = nn.Identity()
if "B" in variant:
    g = torch.Generator().manual_seed(config["seed"])
    with torch.no_grad():
        bound = 1 / 4096 ** 0.5
        model.in_proj.weight.uniform_(-bound, bound, generator=g); model.in_proj.bias.uniform_(-bound, bound, generator=g)
trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
trainer.eval_collector.data_collect(train)
print(json.dumps({k: float(v) for k, v in trainer.evaluate(test, load_best_model=False).items()}))
