"""Plugin trainers: ``<Model>Trainer`` classes here win over RecBole's for that model."""

from recbole_llm.trainer.s3rec_trainer import S3RecTrainer
from recbole_llm.trainer.trainer import PluginTrainerMixin, with_plugin_trainer

__all__ = ["PluginTrainerMixin", "S3RecTrainer", "with_plugin_trainer"]
