"""Where an LLM model's training step (LLMEmb*, LLMESR*, LLM2X*) spends its time next to its baseline: mean step
time and the top operators.

    OMP_NUM_THREADS=1 taskset -c 0 python benchmarks/llmemb_step_profile.py --data_path=../shared/datasets \
        --dataset=scientific --models=BERT4Rec,LLMEmbBERT4Rec --scft

Each model is built with the pair benchmark's settings (hidden 64, MAX_ITEM_LIST_LENGTH 50, all-positions
training, batch 128), trains ``--warmup`` steps, then ``--steps`` timed steps (forward, backward, Adam) on one
thread, then ``--profile_steps`` steps under ``torch.profiler``; ``--set=KEY=VALUE,...`` overrides the LLMEmb side
(``align_alpha=0`` isolates the alignment loss; ``llmesr_alpha=0`` the LLMESR distillation).
"""

import argparse
import os
import time

import torch

from recbole_llm.compat import set_anomaly_detection

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_path", default=os.path.join(ROOT, "..", "shared", "datasets"))
    parser.add_argument("--dataset", default="scientific")
    parser.add_argument("--models", default="BERT4Rec,LLMEmbBERT4Rec")
    parser.add_argument("--scft", action="store_true")
    parser.add_argument("--set", default="", help="KEY=VALUE,... for the LLM models")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=35)
    parser.add_argument("--profile_steps", type=int, default=10)
    args = parser.parse_args()

    from recbole.utils import init_seed

    from recbole_llm.config import Config, parse_overrides
    from recbole_llm.quick_start import prepare_artifacts
    from recbole_llm.utils import create_dataset, data_preparation, get_model

    torch.set_num_threads(1)
    for name in args.models.split(","):
        config_dict = {
            "data_path": os.path.abspath(args.data_path), "train_mode": "all_positions", "train_batch_size": 128,
            "hidden_size": 64, "embedding_size": 64, "inner_size": 256, "MAX_ITEM_LIST_LENGTH": 50, "seed": 2020,
            "state": "WARNING", "show_progress": False,
        }
        if name.startswith(("LLMEmb", "LLMESR", "LLM2X")):
            config_dict.update(scft=args.scft, **parse_overrides([s for s in args.set.split(",") if s]))
        config = Config(model=name, dataset=args.dataset, config_dict=config_dict)
        prepare_artifacts(config)
        init_seed(2020, True)
        train, _, _ = data_preparation(config, create_dataset(config))
        set_anomaly_detection(False)  # importing RecBole's models turns it on
        model = get_model(name)(config, train.dataset).train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        batches = [batch for _, batch in zip(range(args.warmup + args.steps + args.profile_steps), train)]

        def step(batch):
            optimizer.zero_grad()
            model.calculate_loss(batch).backward()
            optimizer.step()

        for batch in batches[: args.warmup]:
            step(batch)
        start = time.perf_counter()
        for batch in batches[args.warmup : args.warmup + args.steps]:
            step(batch)
        print(f"{name}: {1000 * (time.perf_counter() - start) / args.steps:.1f} ms/step, {len(train)} steps/epoch", flush=True)
        with torch.profiler.profile() as profiler:
            for batch in batches[args.warmup + args.steps :]:
                step(batch)
        print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=8))


if __name__ == "__main__":
    main()
