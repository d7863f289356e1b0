"""The tail quota under the cold-start protocol: head / tail with the cold items counted in the 80% quota (the rule
before) against the quota over the warm items, cold items a group of their own (the rule now,
recbole_llm.evaluator.longtail.tail_mask). One model is trained once; its test evaluation is scored by both rules.

    taskset -c 1 env OMP_NUM_THREADS=1 python benchmarks/cold_tail_quota.py --dataset=scientific \
        --data_path=../shared/datasets --model=SASRec --seed=2020 --epochs=30

Prints, as JSON: how many items and test targets are tail / head under each rule, how many warm ones move from
head to tail, and NDCG@10 head / tail under each rule.
"""

import argparse
import json
import tempfile


def scores(model_file):
    """(the test DataStruct, its config) of a saved model, as the trainer scores it."""
    from recbole_llm.compat import capture_data_struct
    from recbole_llm.quick_start import load_model_file
    from recbole_llm.utils import get_trainer

    config, model, train, _, test = load_model_file(model_file, {"state": "ERROR", "show_progress": False})
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    trainer.eval_collector.data_collect(train)
    captured = capture_data_struct(trainer)
    result = trainer.evaluate(test, load_best_model=False)
    return captured["struct"], config, result


def compare(struct, config):
    """Both rules on one evaluation: counts and NDCG@10 head / tail."""
    from recbole_llm.evaluator.longtail import COLD_KEY, GROUPED_METRICS, ITEM_POP_KEY, TARGET_KEY, head_mask, tail_mask

    pop, cold = struct.get(ITEM_POP_KEY), struct.get(COLD_KEY).bool()
    targets = struct.get(TARGET_KEY).long()
    before_tail = tail_mask(pop, config)  # cold items in the quota (popularity 0: all tail)
    before_head = ~before_tail
    before_head[0] = False
    now_tail, now_head = tail_mask(pop, config, cold), head_mask(pop, config, cold)
    moved = before_head & now_tail
    report = {
        "items": int(len(pop) - 1), "cold_items": int(cold.sum()),
        "tail_items": {"before": int(before_tail.sum()), "now": int(now_tail.sum())},
        "warm_tail_items": {"before": int((before_tail & ~cold).sum()), "now": int(now_tail.sum())},
        "head_items": {"before": int(before_head.sum()), "now": int(now_head.sum())},
        "warm_items_head_to_tail": int(moved.sum()),
        "test_targets": int(len(targets)), "cold_targets": int(cold[targets].sum()),
        "tail_targets": {"before": int(before_tail[targets].sum()), "now": int(now_tail[targets].sum())},
        "head_targets": {"before": int(before_head[targets].sum()), "now": int(now_head[targets].sum())},
        "targets_head_to_tail": int(moved[targets].sum()),
    }
    now = {}
    for name in ("ndcg_head", "ndcg_tail"):
        now.update(GROUPED_METRICS[name](config).calculate_metric(struct))
    del struct[COLD_KEY]  # the rule before: the struct without the cold items
    before = {}
    for name in ("ndcg_head", "ndcg_tail"):
        before.update(GROUPED_METRICS[name](config).calculate_metric(struct))
    for key in ("ndcg_head@10", "ndcg_tail@10"):
        report[key] = {"before": before[key], "now": now[key]}
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="scientific")
    parser.add_argument("--data_path", default="../shared/datasets")
    parser.add_argument("--model", default="SASRec")
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--cold_item_ratio", type=float, default=0.1)
    args = parser.parse_args(argv)
    from recbole_llm.quick_start import run_recbole_llm

    with tempfile.TemporaryDirectory() as folder:
        config = {"data_path": args.data_path, "cold_item_ratio": args.cold_item_ratio, "train_mode": "all_positions",
                  "train_batch_size": 128, "seed": args.seed, "epochs": args.epochs, "eval_args": {"mode": "full"},
                  "checkpoint_dir": folder, "state": "WARNING", "show_progress": False}
        run = run_recbole_llm(model=args.model, dataset=args.dataset, config_dict=config)
        struct, config, result = scores(run["model_file"])
        report = {"model": args.model, "dataset": args.dataset, "seed": args.seed, "epochs_run": run["epochs_run"],
                  "ndcg@10": result["ndcg@10"], "ndcg_cold@10": result["ndcg_cold@10"], **compare(struct, config)}
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
