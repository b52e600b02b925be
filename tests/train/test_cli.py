import pytest
import yaml

from fastbert.train import __main__ as cli


def test_print_config_resolves_recipe_and_overrides(capsys):
    argv = ["multitask", "--print_config", "--lr", "3e-4", "--quora.encoder", "cross", "--routine=pcgrad"]
    assert cli.main(argv) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["lr"] == 3e-4 and cfg["routine"] == "pcgrad" and cfg["quora"]["encoder"] == "cross"
    assert cfg["tasks"] == ["sst", "quora", "sts"] and cfg["stage"] == "multitask"


def test_packaged_recipe_by_name(capsys):
    assert cli.main(["multitask", "--config", "frozen_baseline", "--print_config"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["freeze_encoder"] is True and cfg["lr"] == 1e-3
    assert cli.main(["chain", "--config", "report1_best", "--print_config"]) == 0
    assert [link["stage"] for link in yaml.safe_load(capsys.readouterr().out)["chain"]] == [
        "contrastive", "multitask", "single"]


def test_help_and_errors(capsys):
    assert cli.main([]) == 0 and "python -m fastbert.train" in capsys.readouterr().out
    with pytest.raises(cli.config.ConfigError, match="unknown stage"):
        cli.main(["finetune"])
    with pytest.raises(cli.config.ConfigError, match="chain needs --config"):
        cli.main(["chain"])
