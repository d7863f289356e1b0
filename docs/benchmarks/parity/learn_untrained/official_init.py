"""Untrained official PreferenceAlignmentModule on the exported scientific data: N@10 by their rule and with history masked."""
import json, pickle, sys, math
import numpy as np, torch
import transformers
from transformers import BertConfig
BertConfig.from_pretrained = classmethod(lambda cls, *a, **k: cls())
sys.path.insert(0, "/tmp/official/learn/src")
from model.LEARN import PreferenceAlignmentModule
torch.set_num_threads(1)
b = "/tmp/recbole_llm_parity/learn_scientific/amazon_2018/finetune_data/"
smap = json.load(open(b + "Scientific/smap.json"))
p2e = pickle.load(open(b + "product2emb_Scientific.pkl", "rb"))
tr, va, te = (json.load(open(b + f"Scientific/{n}_product.json")) for n in ("train", "val", "test"))
E = torch.tensor(np.stack([p2e[p] for p in smap]), dtype=torch.float32)  # smap order = idx order
assert [smap[p] for p in smap] == list(range(len(smap)))
users = list(te)
hist = [[smap[i] for i in (tr[u] + va[u])][-40:] for u in users]
gt = torch.tensor([smap[te[u][0]] for u in users])
L = 40
ids = torch.full((len(users), L), -1, dtype=torch.long); mask = torch.zeros(len(users), L, dtype=torch.long)
for r, h in enumerate(hist):
    ids[r, :len(h)] = torch.tensor(h); mask[r, :len(h)] = 1
def ndcg(scores, masked):
    if masked:
        scores = scores.clone(); rows = torch.arange(len(scores)).unsqueeze(1).expand_as(ids)
        ok = ids >= 0
        scores[rows[ok], ids[ok]] = -1e9
    pred = scores[torch.arange(len(scores)), gt].unsqueeze(1)
    rank = (pred < scores).sum(1).float()
    return float(((rank < 10).float() / torch.log2(rank + 2)).mean())
for seed in map(int, sys.argv[1].split(",")):
    torch.manual_seed(seed)
    m = PreferenceAlignmentModule(4096, 4096, num_layers=4).eval()
    with torch.no_grad():
        items = torch.cat([m.extract_item_embedding(E[i:i + 512].unsqueeze(1)) for i in range(0, len(E), 512)])
        us = []
        for i in range(0, len(users), 256):
            x = torch.where(ids[i:i + 256, :, None] >= 0, E[ids[i:i + 256].clamp(min=0)], torch.zeros(1))
            us.append(m.extract_user_embedding(None, x, mask[i:i + 256]))
        scores = torch.cat(us) @ items.T
    print(json.dumps({"seed": seed, "ndcg@10 theirs": ndcg(scores, False), "ndcg@10 history masked": ndcg(scores, True)}), flush=True)
