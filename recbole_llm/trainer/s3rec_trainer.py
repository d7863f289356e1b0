"""S3Rec from one command: pre-train, then fine-tune the pre-trained weights, in one ``fit``.

RecBole runs S3Rec's two stages as two runs (``train_stage: pretrain``, then ``finetune`` with
``pre_model_path``). With ``s3rec_finetune_after_pretrain: True`` (the plugin default) this trainer
pre-trains for ``pretrain_epochs``, writes the weights to a tensors-only file (RecBole's fine-tune stage
loads it with ``torch.load``, which torch>=2.6 restricts to tensors), builds the fine-tune model from it
(its loss without the cold-start items, as the pre-training model's) and trains that with early stopping as usual.
Evaluation uses the fine-tuned model.

Pre-training rows: with the plugin's S3Rec and ``pretrain_rows: user`` (its default) every pre-training epoch
runs over one row per user (``recbole_llm.data.utils.all_positions_dataset`` of the training split: the
longest prefix row of each user plus its next-item list), built once; the model appends the row's target
to get the whole training sequence; ``prefix`` pre-trains on the prefix rows, as RecBole. Pre-training batches hold
``pretrain_batch_size`` rows (None: ``train_batch_size``). RecBole's own S3Rec class pre-trains on the training
loader, as RecBole. Fine-tuning always uses the training loader (RecBole's prefix rows, ``train_batch_size``).
"""

import os

import torch
from recbole.data.utils import get_dataloader
from recbole.trainer import S3RecTrainer as RecBoleS3RecTrainer

from recbole_llm.data.cold import exclude_cold_items_from_loss
from recbole_llm.data.utils import all_positions_dataset


class S3RecTrainer(RecBoleS3RecTrainer):
    def pretrain_data(self, train_data):
        """The loader pre-training runs over. The plugin's S3Rec: one row per user (``pretrain_rows: user``) or
        the prefix rows, in batches of ``pretrain_batch_size`` (None: ``train_batch_size``); built once.
        RecBole's S3Rec: ``train_data``, as RecBole."""
        rows = getattr(self.model, "pretrain_rows", None)
        batch_size = self.config["pretrain_batch_size"] or self.config["train_batch_size"]
        if rows is None or (rows == "prefix" and batch_size == self.config["train_batch_size"]):
            return train_data
        cached = getattr(self, "_pretrain_data", None)
        if cached is None or cached[0] is not train_data:
            dataset = all_positions_dataset(train_data._dataset) if rows == "user" else train_data._dataset
            train_batch_size = self.config["train_batch_size"]
            self.config["train_batch_size"] = batch_size  # RecBole's loaders read their batch size from here
            try:
                loader = get_dataloader(self.config, "train")(
                    self.config, dataset, train_data._sampler, shuffle=self.config["shuffle"]
                )
            finally:
                self.config["train_batch_size"] = train_batch_size
            self._pretrain_data = cached = (train_data, loader)
        return cached[1]

    def pretrain(self, train_data, verbose=True, show_progress=False):
        return super().pretrain(self.pretrain_data(train_data), verbose, show_progress)

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        if self.model.train_stage != "pretrain" or self.config["s3rec_finetune_after_pretrain"] is False:
            return super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)
        base = os.path.splitext(self.saved_model_file)[0]  # unique per run (RecBole's snapshots are not)
        self.pretrain(train_data, verbose, show_progress)
        weights = base + "-pretrained-weights.pth"
        torch.save({"state_dict": self.model.state_dict()}, weights)
        self.logger.info(f"S3Rec: pre-training done, fine-tuning from {weights}")
        self.config["train_stage"] = "finetune"
        self.config["pre_model_path"] = weights
        self.model = type(self.model)(self.config, train_data.dataset).to(self.device)
        exclude_cold_items_from_loss(self.model, train_data._dataset)  # as quick_start did for the pre-training model
        self.optimizer = self._build_optimizer()
        self.start_epoch, self.cur_step = 0, 0
        self.best_valid_score = -float("inf") if self.valid_metric_bigger else float("inf")
        self.best_valid_result = None
        self.saved_model_file = base + "-finetuned.pth"
        self._own_checkpoints.add(self.saved_model_file)
        return super(RecBoleS3RecTrainer, self).fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)
