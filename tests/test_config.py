import pytest

from tasks.config import PROJECT_ROOT as ROOT
from tasks.config import ConfigError, config_from_dict, load_config, parse_set_options


@pytest.mark.parametrize("path", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_shipped_configs_validate(path):
    cfg = load_config(f"configs/{path}")
    assert cfg.source and cfg.finetune.train.seed == cfg.seed == cfg.distill.train.seed


def test_overrides_and_stage_train_defaults():
    cfg = load_config("configs/smoke.yaml", {"prune.ratio": "0.6", "distill.train.epochs": 3, "seed": 7})
    assert cfg.prune.ratio == 0.6 and cfg.distill.train.epochs == 3 and cfg.prune.train.seed == 7
    # a partial train mapping keeps the stage's own defaults for the rest
    assert cfg.distill.train.optimizer == "adamw" and cfg.distill.train.batch_size == 32
    assert parse_set_options(["prune.ratio=0.6", "data.classes=[1, 2]"]) == {"prune.ratio": "0.6",
                                                                              "data.classes": "[1, 2]"}
    assert load_config("configs/smoke.yaml", {"data.classes": "[1, 2]"}).data.classes == [1, 2]


def test_config_hash_changes_with_what_changes_results_only():
    a = load_config("configs/smoke.yaml")
    assert a.config_hash() == load_config("configs/smoke.yaml").config_hash()
    for setting, value in {"prune.ratio": 0.4, "seed": 3, "source": "scratch:mobilenet_v2", "data.image_size": 32,
                           "distributed.processes_per_node": 2, "fidelity.bootstrap": 200}.items():
        assert a.config_hash() != load_config("configs/smoke.yaml", {setting: value}).config_hash(), setting
    # where outputs and tracking go, the run's name and how its work is spread: the same experiment
    elsewhere = {"output_dir": "/tmp/elsewhere", "tracking.uri": "sqlite:////tmp/other.db", "name": "again",
                 "tracking.experiment": "another", "data.loader_workers": 3, "search.parallel": 2,
                 "distributed.backend": "gloo"}
    assert load_config("configs/smoke.yaml", elsewhere).config_hash() == a.config_hash()


@pytest.mark.parametrize("overrides, message", [
    ({"prune.ratio": 1.5}, "prune.ratio: Input should be less than 1"),
    ({"distill.temperature": 0}, "distill.temperature: Input should be greater than 0"),
    ({"distill.alpha": 1.2}, "distill.alpha: Input should be less than or equal to 1"),
    ({"finetune.train.epochs": -1}, "finetune.train: invalid training setting epochs=-1"),
    ({"data.classes": "[]"}, "data.classes: class subset is empty"),
    ({"prune.ratoi": 0.5}, "prune.ratoi: unknown key"),
    ({"source": "hub:resnet18"}, "source: unknown source 'hub:resnet18'"),
    ({"data.name": "mnist"}, "data.name: Input should be"),
    ({"search.pruner": "median"}, "search.pruner: Input should be 'none', 'successive_halving' or 'hyperband'"),
])
def test_bad_values_name_the_field(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config("configs/smoke.yaml", overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_yaml_syntax_error_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("source: scratch:resnet18\nprune: {ratio: 0.5\n")
    with pytest.raises(ConfigError, match=r"YAML syntax error at line \d+"):
        load_config(bad)
    with pytest.raises(ConfigError, match="config file nowhere.yaml not found"):
        load_config("nowhere.yaml")
    with pytest.raises(ConfigError, match=f"config {tmp_path} is a directory, not a YAML file"):
        load_config(tmp_path)
    with pytest.raises(ConfigError, match="config /dev/null is not a regular file"):
        load_config("/dev/null")
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(bad)


def test_source_is_required():
    with pytest.raises(ConfigError, match="source: Field required"):
        config_from_dict({})


def test_search_budget_numbers_shares_and_space_values():
    assert load_config("configs/smoke.yaml", {"search.budget.max": "3e6"}).search.budget.max == 3e6  # YAML text
    assert load_config("configs/smoke.yaml", {"search.budget.max": "12.5%"}).search.budget.max == "12.5%"
    several = load_config("configs/smoke.yaml", {"search.budget.max": '["5%", "3e6", 25]'}).search.budget
    assert several.max == ["5%", 3e6, 25] and several.targets() == ["5%", 3e6, 25]
    assert load_config("configs/smoke.yaml", {"search.budget.max": '["5%"]'}).search.budget.targets() == ["5%"]
    for bad, message in [("[]", "the list of targets is empty"), ('["5%", "5%"]', "target 5% is given twice"),
                         ('["5%", "150%"]', "150% must be more than 0% and at most 100%"),
                         ('["5%", true]', "True is neither a number nor a share")]:
        with pytest.raises(ConfigError, match=rf"search.budget.max: .*{message}"):
            load_config("configs/smoke.yaml", {"search.budget.max": bad})
    with pytest.raises(ConfigError, match=r"search.space.distill.alpha: 1.5: Input should be less than or equal to 1"):
        load_config("configs/smoke.yaml", {"search.space": '{"distill.alpha": {"low": 0.5, "high": 1.5}}'})
    with pytest.raises(ConfigError, match=r"search.space.trim.keep_per_stage: \[0, 1\]: .*at least 1 block"):
        load_config("configs/smoke.yaml", {"search.space": '{"trim.keep_per_stage": {"choices": [1, [0, 1]]}}'})
    # a training setting as a knob: checked as the training settings check it
    lr = load_config("configs/smoke.yaml", {"search.space": '{"distill.train.lr": {"low": 1e-4, "high": 1e-2}}'})
    assert lr.search.space["distill.train.lr"].high == 1e-2
    with pytest.raises(ConfigError, match=r"search.space.distill.train.lr: 0.0: invalid training setting lr=0.0"):
        load_config("configs/smoke.yaml", {"search.space": '{"distill.train.lr": {"choices": [0.01, 0.0]}}'})


def test_output_directory_check_holds_when_pipelines_start_together(tmp_path):
    """Pipelines started at once probe the same output directory; one's probe must not be another's."""
    from concurrent.futures import ThreadPoolExecutor

    from tasks.preflight import ensure_writable

    def probe_many(_):
        for _ in range(300):
            ensure_writable(tmp_path / "outputs")

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(probe_many, range(4)))  # re-raises the first failure
    assert not list((tmp_path / "outputs").iterdir())
