"""Dataloader construction: RecBole's, with the plugin's training modes."""

from recbole.data import data_preparation as recbole_data_preparation


def data_preparation(config, dataset):
    return recbole_data_preparation(config, dataset)
