"""recbole_llm.compat: the RecBole version its patches target is checked at import, in one line (issue 30)."""

import subprocess
import sys

import pytest

from recbole_llm import compat


def test_the_installed_recbole_is_the_targeted_one():
    assert compat.installed_recbole_version() == compat.RECBOLE_VERSION == "1.2.1"
    assert compat.recbole_version_problem(compat.RECBOLE_VERSION) is None


def test_another_version_is_one_warning_line_with_the_fix(capsys):
    compat.check_recbole_version("1.1.1")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("warning: ")
    assert "RecBole 1.1.1" in err and "RecBole 1.2.1" in err and "pip install --no-deps recbole==1.2.1" in err


def test_no_recbole_is_one_import_error_line():
    with pytest.raises(ImportError) as err:
        compat.check_recbole_version(None)
    assert "\n" not in str(err.value) and "pip install --no-deps recbole==1.2.1" in str(err.value)


def test_importing_the_package_without_recbole_says_how_to_install_it():
    """The package's ImportError comes from compat's check (one source of the message)."""
    code = ("import sys; sys.modules['recbole'] = None\n"
            "try:\n    import recbole_llm\nexcept ImportError as err:\n    print(err)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == compat.recbole_version_problem(None), out.stderr[-500:]


def test_stand_in_loss_type_restores_the_real_one():
    config = {"loss_type": "SSM"}
    with compat.stand_in_loss_type(config, {"SSM": "CE"}) as real:
        assert (real, config["loss_type"]) == ("SSM", "CE")
    assert config["loss_type"] == "SSM"


def test_long_tail_metrics_are_in_recbole_registry():
    from recbole.evaluator.register import metric_types, metrics_dict

    from recbole_llm.evaluator.longtail import GROUPED_METRICS

    assert len(GROUPED_METRICS) == 18
    for name, cls in GROUPED_METRICS.items():
        assert metrics_dict[name] is cls and metric_types[name] == cls.metric_type
        assert f"{cls.base}_{cls.group}" == name and cls.__qualname__ == cls.__name__


def test_dataset_and_trainer_factories_pick_named_classes():
    import pickle

    import recbole.data.dataset as recbole_datasets
    import recbole.trainer as recbole_trainers

    from recbole_llm.data import dataset as plugin_datasets
    from recbole_llm.trainer import trainer as plugin_trainers

    for base, cold in ((recbole_datasets.SequentialDataset, True), (plugin_datasets.LLMFeatureDataset, True),
                       (recbole_datasets.KnowledgeBasedDataset, False)):
        cls = plugin_datasets.plugin_dataset_class(base, cold=cold)
        assert cls.__name__ == f"{'ColdReported' if cold else 'Reported'}{base.__name__}"
        assert getattr(plugin_datasets, cls.__name__) is cls and pickle.loads(pickle.dumps(cls)) is cls
    for name in ("Trainer", "KGTrainer", "TraditionalTrainer", "NCLTrainer"):
        cls = plugin_trainers.with_plugin_trainer(getattr(recbole_trainers, name))
        assert cls.__name__ == name and getattr(plugin_trainers, name) is cls
        assert plugin_trainers.with_plugin_trainer(cls) is cls
