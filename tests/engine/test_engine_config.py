"""Config loading: train defaults and override validation (a wrong key must fail, naming the key)."""

import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from unidet2.engine.config import TRAIN_DEFAULTS, apply_overrides, fill_train_defaults, load_config

REPO = Path(__file__).resolve().parents[2]
TOY_CONFIG = str(REPO / "launch/examples/configs/toy_regression.py")


def _cfg():
    return OmegaConf.create(
        {"train": {"max_iter": 10, "amp": {"enabled": False}}, "model": {"layers": [{"dim": 4}, {"dim": 8}]}}
    )


def test_override_of_existing_keys_including_list_items():
    cfg = apply_overrides(_cfg(), ["train.max_iter=25", "model.layers.1.dim=16", "train.amp.enabled=true"])
    assert cfg.train.max_iter == 25
    assert cfg.model.layers[1].dim == 16
    assert cfg.train.amp.enabled is True


def test_unknown_key_names_the_key_and_suggests_the_close_match():
    cfg = _cfg()
    with pytest.raises(KeyError) as info:
        apply_overrides(cfg, ["train.max_itr=5"])
    message = info.value.args[0]
    assert "train.max_itr" in message and "max_iter" in message and "+train.max_itr=5" in message
    assert "max_itr" not in cfg.train  # nothing was created


def test_unknown_intermediate_key_and_bad_list_index():
    with pytest.raises(KeyError, match="the config root has no key 'trian'"):
        apply_overrides(_cfg(), ["trian.max_iter=5"])
    with pytest.raises(KeyError, match="list of 2 items, '5' is not a valid index"):
        apply_overrides(_cfg(), ["model.layers.5.dim=1"])
    with pytest.raises(KeyError, match="train.max_iter is a int value"):
        apply_overrides(_cfg(), ["train.max_iter.x=1"])


def test_plus_adds_a_new_key_and_refuses_an_existing_one():
    cfg = apply_overrides(_cfg(), ["+train.new_option=3", "++train.max_iter=7", "++model.extra=1"])
    assert cfg.train.new_option == 3 and cfg.train.max_iter == 7 and cfg.model.extra == 1
    with pytest.raises(KeyError, match="already exists"):
        apply_overrides(cfg, ["+train.max_iter=1"])
    with pytest.raises(KeyError, match="has no key 'nope'"):
        apply_overrides(cfg, ["+nope.deeper=1"])


def test_train_defaults_are_filled_and_values_checked():
    cfg = fill_train_defaults(OmegaConf.create({"train": {"max_iter": 3, "amp": {"enabled": True}}}))
    assert cfg.train.max_iter == 3 and cfg.train.amp.enabled is True
    assert cfg.train.amp.dtype == TRAIN_DEFAULTS["amp"]["dtype"]
    assert set(TRAIN_DEFAULTS) <= set(cfg.train)
    with pytest.raises(ValueError, match="train.amp.dtype"):
        fill_train_defaults(OmegaConf.create({"train": {"amp": {"dtype": "fp8"}}}))


def test_load_config_applies_overrides_to_a_lazy_config_file():
    cfg = load_config(TOY_CONFIG, ["train.max_iter=3", "dataloader.train.batch_size=2", "train.amp.dtype=fp16"])
    assert cfg.train.max_iter == 3 and cfg.dataloader.train.batch_size == 2 and cfg.train.amp.dtype == "fp16"
    with pytest.raises(ValueError, match="train.amp.dtype"):
        load_config(TOY_CONFIG, ["train.amp.dtype=int8"])


def test_train_net_cli_rejects_a_wrong_key_with_a_clear_message():
    result = subprocess.run(
        [sys.executable, str(REPO / "tools/train_net.py"), "--config-file", TOY_CONFIG, "train.max_itr=3"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert result.returncode == 2
    assert "Unknown config key 'train.max_itr'" in result.stderr
    assert "Traceback" not in result.stderr


def test_top_level_list_in_a_config_file_is_refused_not_dropped(tmp_path):
    """LazyConfig.load keeps only dict-like top-level values: a list would vanish and the run go on without it."""
    config = tmp_path / "config.py"
    config.write_text(
        "from fractions import Fraction\n"
        "from detectron2.config import LazyCall as L\n"
        "TRAIN_DATASETS = ['a', 'b']  # an UPPER_CASE module constant may be a list\n"
        "train = {'output_dir': 'out'}\n"
        "dataset_registration = [L(Fraction)(numerator=1)]\n"
    )
    with pytest.raises(ValueError, match=r"config.py:5: top-level 'dataset_registration' is a list"):
        load_config(str(config))
    config.write_text(config.read_text().replace("[L(Fraction)(numerator=1)]", "{'toy': L(Fraction)(numerator=1)}"))
    cfg = load_config(str(config), ["dataset_registration.toy.numerator=2"])
    assert cfg.dataset_registration.toy.numerator == 2 and "TRAIN_DATASETS" not in cfg


def test_config_dataset_registration_runs_first():
    from detectron2.config import LazyCall as L

    from unidet2.engine.run import register_config_datasets

    calls = []

    def register(name):
        calls.append(name)

    def config(registration):
        return OmegaConf.create({"dataset_registration": registration}, flags={"allow_objects": True})

    register_config_datasets(config({"first": L(register)(name="a"), "second": L(register)(name="b")}))
    register_config_datasets(config([L(register)(name="c")]))  # a list built in code
    register_config_datasets(OmegaConf.create({}))
    assert calls == ["a", "b", "c"]
