"""u2plus.config: defaults, YAML + _base_ chains, dotted overrides, errors that name the key."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from u2plus.config import config_from_checkpoint, load_config, save_config
from u2plus.errors import ConfigError


def write(path, text: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_defaults_load():
    cfg = load_config()
    assert cfg.seed == 0
    assert cfg.data.dataset == "camvid"
    assert cfg.data.num_classes == 11
    assert cfg.data.ignore_index == 255
    assert list(cfg.data.crop_size) == [321, 321]
    assert cfg.model.encoder == "tf_efficientnet_lite0"
    assert cfg.model.output_stride == 16
    assert cfg.train.max_iters == 1000
    assert cfg.train.optimizer == "sgd"
    assert cfg.train.lr == 0.01
    assert cfg.train.head_lr_mult == 10.0
    assert cfg.method.name == "suponly"
    assert cfg.resume is None


def test_yaml_overrides_defaults(tmp_path):
    f = write(tmp_path / "a.yaml", "seed: 7\ntrain:\n  lr: 0.5\ndata:\n  crop_size: [32, 48]\n")
    cfg = load_config(f)
    assert cfg.seed == 7
    assert cfg.train.lr == 0.5
    assert list(cfg.data.crop_size) == [32, 48]
    # untouched keys keep their defaults
    assert cfg.train.max_iters == 1000
    assert cfg.train.momentum == 0.9


def test_base_chain_resolution_order(tmp_path):
    # grand <- base <- child ; later layers win, earlier layers' other keys survive.
    write(tmp_path / "cfgs/grand.yaml", "seed: 1\ntrain:\n  lr: 0.1\n  max_iters: 11\n  momentum: 0.5\n")
    write(tmp_path / "cfgs/sub/base.yaml", "_base_: ../grand.yaml\ntrain:\n  lr: 0.2\n  max_iters: 22\n")
    child = write(tmp_path / "cfgs/sub/child.yaml", "_base_: base.yaml\ntrain:\n  lr: 0.3\n")
    cfg = load_config(child)
    assert cfg.seed == 1  # only in grand
    assert cfg.train.momentum == 0.5  # only in grand
    assert cfg.train.max_iters == 22  # base overrides grand
    assert cfg.train.lr == 0.3  # child overrides base
    assert "_base_" not in cfg


def test_base_list_later_wins(tmp_path):
    write(tmp_path / "b1.yaml", "seed: 1\nout_dir: one\n")
    write(tmp_path / "b2.yaml", "seed: 2\n")
    child = write(tmp_path / "c.yaml", "_base_: [b1.yaml, b2.yaml]\n")
    cfg = load_config(child)
    assert cfg.seed == 2
    assert cfg.out_dir == "one"


def test_overrides_beat_yaml(tmp_path):
    f = write(tmp_path / "a.yaml", "seed: 7\ntrain:\n  max_iters: 100\n")
    cfg = load_config(f, ["train.max_iters=5", "seed=3", "data.crop_size=[64,96]"])
    assert cfg.train.max_iters == 5
    assert cfg.seed == 3
    assert list(cfg.data.crop_size) == [64, 96]
    assert isinstance(cfg.train.max_iters, int)


def test_override_without_file():
    cfg = load_config(None, ["train.optimizer=adamw", "model.pretrained=none", "data.mean=[0.5,0.5,0.5]"])
    assert cfg.train.optimizer == "adamw"
    assert cfg.model.pretrained == "none"
    assert list(cfg.data.mean) == [0.5, 0.5, 0.5]


def test_unknown_key_in_override_names_key_and_suggests():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["train.max_iter=5"])
    msg = str(e.value)
    assert "'train.max_iter'" in msg
    assert "did you mean 'train.max_iters'" in msg


def test_unknown_key_in_yaml_names_full_dotted_key_and_file(tmp_path):
    f = write(tmp_path / "bad.yaml", "data:\n  crop_sise: [8, 8]\n")
    with pytest.raises(ConfigError) as e:
        load_config(f)
    msg = str(e.value)
    assert "'data.crop_sise'" in msg
    assert "'data.crop_size'" in msg
    assert str(f) in msg


def test_unknown_key_in_base_file_is_reported(tmp_path):
    write(tmp_path / "base.yaml", "train:\n  lrr: 0.1\n")
    child = write(tmp_path / "child.yaml", "_base_: base.yaml\nseed: 1\n")
    with pytest.raises(ConfigError, match=r"train\.lrr"):
        load_config(child)


def test_unknown_top_level_key_in_yaml(tmp_path):
    f = write(tmp_path / "bad.yaml", "sead: 1\n")
    with pytest.raises(ConfigError, match=r"'sead'.*did you mean 'seed'"):
        load_config(f)


@pytest.mark.parametrize("override,key", [
    ("train.optimizer=adam", "train.optimizer"),
    ("train.lr_schedule=cosine", "train.lr_schedule"),
    ("eval.mode=tiles", "eval.mode"),
    ("model.output_stride=4", "model.output_stride"),
    ("data.crop_size=[64]", "data.crop_size"),
])
def test_invalid_choice_names_key(override, key):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert key in str(e.value)


def test_wrong_type_override_is_config_error():
    with pytest.raises(ConfigError, match="seed"):
        load_config(None, ["seed=abc"])


def test_malformed_override():
    with pytest.raises(ConfigError, match="'foo'"):
        load_config(None, ["foo"])


def test_missing_config_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as e:
        load_config(missing)
    assert str(missing) in str(e.value)


def test_missing_base_file(tmp_path):
    child = write(tmp_path / "c.yaml", "_base_: gone.yaml\n")
    with pytest.raises(ConfigError, match="gone.yaml"):
        load_config(child)


def test_circular_base(tmp_path):
    write(tmp_path / "a.yaml", "_base_: b.yaml\n")
    b = write(tmp_path / "b.yaml", "_base_: a.yaml\n")
    with pytest.raises(ConfigError, match="circular"):
        load_config(b)


def test_yaml_syntax_error(tmp_path):
    f = write(tmp_path / "bad.yaml", "train: [unclosed\n")
    with pytest.raises(ConfigError, match="cannot parse"):
        load_config(f)


def test_config_from_checkpoint_round_trip():
    cfg = load_config(None, ["seed=3", "train.max_iters=5", "data.crop_size=[64,96]", "train.optimizer=adamw"])
    state = {"config": OmegaConf.to_container(cfg)}
    back = config_from_checkpoint(state)
    assert back == cfg
    assert back.seed == 3 and back.train.max_iters == 5 and list(back.data.crop_size) == [64, 96]
    assert back.train.optimizer == "adamw"


def test_config_from_checkpoint_partial_fills_defaults():
    back = config_from_checkpoint({"config": {"train": {"lr": 0.25}}})
    assert back.train.lr == 0.25
    assert back.train.max_iters == 1000


def test_config_from_checkpoint_errors():
    with pytest.raises(ConfigError, match="no config"):
        config_from_checkpoint({"model": {}})
    with pytest.raises(ConfigError, match=r"train\.max_iter"):
        config_from_checkpoint({"config": {"train": {"max_iter": 3}}})


def test_save_config_reloads_equal(tmp_path):
    cfg = load_config(None, ["seed=9", "data.crop_size=[16,24]"])
    out = tmp_path / "run" / "config.yaml"
    save_config(cfg, out)
    assert load_config(out) == cfg


def test_amp_off_survives_yaml_boolean_parsing(tmp_path):
    from u2plus.config import load_config

    assert load_config(None, ["train.amp=off"]).train.amp == "off"
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  amp: off\n")
    assert load_config(f).train.amp == "off"
    assert load_config(None, ["train.amp=bf16"]).train.amp == "bf16"


def test_class_weights_values():
    assert load_config(None, []).train.class_weights is None
    assert load_config(None, ["train.class_weights=median_frequency"]).train.class_weights == "median_frequency"
    assert list(load_config(None, ["train.class_weights=[1,2.5,3]"]).train.class_weights) == [1, 2.5, 3]
    for bad in ("inverse", "[1,-2]", "[1,true]", "3"):
        with pytest.raises(ConfigError, match="train.class_weights"):
            load_config(None, [f"train.class_weights={bad}"])
    with pytest.raises(ConfigError, match="cannot be combined with train.ohem"):
        load_config(None, ["train.class_weights=median_frequency", "train.ohem=true"])


@pytest.mark.parametrize("override, message", [
    ("train.lr=nan", "train.lr=nan must be a finite number > 0"),
    ("train.lr=0", "train.lr=0.0 must be a finite number > 0"),
    ("train.lr=inf", "train.lr=inf must be a finite number > 0"),
    ("train.momentum=1.0", "train.momentum=1.0 must be a finite number in [0, 1)"),
    ("method.ema_momentum=-0.1", "method.ema_momentum=-0.1 must be a finite number in [0, 1]"),
    ("method.delta_p=1.5", "method.delta_p=1.5 must be a finite number in [0, 1]"),
    ("data.blur_p=2", "data.blur_p=2.0 must be a finite number in [0, 1]"),
    ("data.unlabeled_batch_size=0", "data.unlabeled_batch_size=0 must be an integer >= 1"),
    ("train.log_every=0", "train.log_every=0 must be an integer >= 1"),
    ("data.scale_range=[0,2]", "data.scale_range=[0, 2] must be finite numbers > 0"),
    ("data.scale_range=[2.0,1.0]", "data.scale_range=[2.0, 1.0] must be [low, high] with low <= high"),
    ("method.cutmix_area=[0.5,2]", "method.cutmix_area=[0.5, 2] must be finite numbers in (0, 1]"),
    ("eval.scales=[1,.inf]", "eval.scales=[1, inf] must be finite numbers > 0"),
    ("eval.stride=[0,3]", "eval.stride=[0, 3] must be finite numbers >= 1"),
    ("method.r_l=30", "method.r_l=30 must be <= method.r_h=20"),
    ("train.nonfinite=ignore", "train.nonfinite='ignore' is not one of stop, skip"),
    # the keys of the domain-adaptive and weakly-supervised settings are in the same table
    ("data.source.rcs_temperature=0", "data.source.rcs_temperature=0.0 must be a finite number > 0"),
    ("method.pseudo_threshold=1.5", "method.pseudo_threshold=1.5 must be a finite number in [0, 1]"),
    ("method.fd_lambda=-1", "method.fd_lambda=-1.0 must be a finite number >= 0"),
    ("model.fusion_rates=[1,0]", "model.fusion_rates=[1, 0] must be finite numbers >= 1"),
    ("method.sup_only_fraction=1.5", "method.sup_only_fraction=1.5 must be a finite number in [0, 1]"),
    ("method.cam_beta=nan", "method.cam_beta=nan must be a finite number in [0, 1]"),
    ("method.cam_bg_threshold=0.6", "method.cam_bg_threshold=0.6 must be <= method.cam_fg_threshold=0.55"),
    ("train.save_at=[0]", "train.save_at=[0] must be finite numbers >= 1"),
])
def test_values_outside_their_range_name_key_and_range(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert str(e.value) == message


def test_unlabeled_images_only_for_methods_that_train_on_them():
    with pytest.raises(ConfigError, match="data.unlabeled is set but method.name=suponly"):
        load_config(None, ["data.unlabeled=camvid/1-8/unlabeled.txt"])
    assert load_config(None, ["data.unlabeled=x.txt", "method.name=u2pl"]).data.unlabeled == "x.txt"
    # a checkpoint's own config is taken as written (runs made before this check keep working)
    old = OmegaConf.to_container(load_config(None, []))
    old["data"]["unlabeled"] = "x.txt"
    assert config_from_checkpoint({"config": old}).data.unlabeled == "x.txt"


def test_overwrite_cannot_resume():
    with pytest.raises(ConfigError, match="overwrite=true starts the run afresh"):
        load_config(None, ["overwrite=true", "resume=auto"])
    assert load_config(None, ["overwrite=true", "resume=other/last.pt"]).overwrite


def test_config_from_checkpoint_takes_overrides():
    state = {"config": OmegaConf.to_container(load_config(None, ["seed=3"]))}
    cfg = config_from_checkpoint(state, ["data.root=/elsewhere", "eval.mode=sliding"])
    assert cfg.seed == 3 and cfg.data.root == "/elsewhere" and cfg.eval.mode == "sliding"


def test_config_differences_name_the_model_keys_that_differ():
    from u2plus.config import config_differences

    a = load_config(None, [])
    b = load_config(None, ["model.encoder=resnet18", "data.num_classes=21", "train.lr=0.5", "model.aspp_rates=[1,2,3]"])
    assert config_differences(a, a) == ""
    assert config_differences(a, b) == ("data.num_classes 11 vs 21, model.encoder tf_efficientnet_lite0 vs resnet18, "
                                        "model.aspp_rates [6, 12, 18] vs [1, 2, 3]")
    # the DAFormer decoder, its fusion rates and the weakly-supervised heads (tags) are the model too
    da = load_config(None, ["model.decoder=daformer", "model.fusion_rates=[1,6]"])
    assert config_differences(a, da) == "model.decoder deeplabv3plus vs daformer, model.fusion_rates [1, 6, 12, 18] vs [1, 6]"
    ws = load_config(None, ["data.supervision=tags", "method.name=afa", "method.cls_pooling=avg"])
    assert config_differences(a, ws) == "data.supervision pixels vs tags, method.cls_pooling max vs avg"
