"""S3Rec from one command: pre-train, then fine-tune the pre-trained weights, in one ``fit``.

RecBole runs S3Rec's two stages as two runs (``train_stage: pretrain``, then ``finetune`` with
``pre_model_path``). With ``s3rec_finetune_after_pretrain: True`` (the plugin default) this trainer
pre-trains for ``pretrain_epochs``, writes the weights to a tensors-only file (RecBole's fine-tune stage
loads it with ``torch.load``, which torch>=2.6 restricts to tensors), builds the fine-tune model from it
and trains that with early stopping as usual. Evaluation uses the fine-tuned model.
"""

import os

import torch
from recbole.trainer import S3RecTrainer as RecBoleS3RecTrainer


class S3RecTrainer(RecBoleS3RecTrainer):
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
        self.optimizer = self._build_optimizer()
        self.start_epoch, self.cur_step = 0, 0
        self.best_valid_score = -float("inf") if self.valid_metric_bigger else float("inf")
        self.best_valid_result = None
        self.saved_model_file = base + "-finetuned.pth"
        self._own_checkpoints.add(self.saved_model_file)
        return super(RecBoleS3RecTrainer, self).fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)
