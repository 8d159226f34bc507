"""Configuration: typed defaults (dataclasses), YAML files and ``key=value`` overrides.

One schema for every setting and every process count. Unknown keys are errors that name the
key (with a suggestion), so a typo never silently falls back to a default.

Resolution order: schema defaults < ``_base_`` files (recursively) < the YAML file < CLI overrides.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from .criterion import CriterionConfig
from .errors import ConfigError
from .ws_criterion import WSCriterionConfig


@dataclass
class DomainConfig:
    """One domain of the domain-adaptive setting (``data.source`` or ``data.target``). Its datasets
    are built as ``data`` with the keys set here replaced (a key left null keeps ``data``'s), so
    crop, augmentation, batch and class count stay shared. The target's labels are never trained
    on: they only evaluate."""

    dataset: Optional[str] = None  # null: no such domain (semi-supervised configs)
    root: Optional[str] = None
    splits: list = field(default_factory=lambda: ["train"])  # training splits, joined (CamVid day: train + val)
    val_split: Optional[str] = None  # evaluated split (target: the headline mIoU; source: a second eval set)
    ids: Optional[str] = None  # split file: keep only these ids (training and evaluation)
    prefixes: Optional[list] = None  # keep only ids starting with one of these (CamVid sequences)
    resize_factor: Optional[float] = None
    resize: Optional[list] = None  # [height, width] at load (GTA5 720x1280, Cityscapes 512x1024)
    class_names: Optional[list] = None  # folder dataset
    images: Optional[str] = None
    masks: Optional[str] = None
    val_images: Optional[str] = None
    val_masks: Optional[str] = None
    # Rare class sampling (DAFormer, source domain): class c with probability
    # softmax_c((1 - f_c) / T), f_c its share of the source pixels, then an image with at least
    # rcs_min_pixels of c; null: uniform. Class statistics are cached beside the data.
    rcs_temperature: Optional[float] = None
    rcs_min_pixels: int = 3000


@dataclass
class DataConfig:
    dataset: str = "camvid"  # camvid | voc | cityscapes | gta5 | synthia | ccp | folder
    # the dataset's folder: absolute, or relative to the current directory where it exists there,
    # else relative to the data directory $U2PLUS_DATA (default ./data; see u2plus/paths.py)
    root: str = "camvid"
    num_classes: int = 11
    ignore_index: int = 255
    train_split: str = "train"
    val_split: str = "val"
    # Ids of the labeled / unlabeled training images: a split file (one id a line), either a path
    # or a path inside the package's shipped splits (e.g. "camvid/1-8/labeled.txt").
    # labeled=None: every training image is labeled. unlabeled=None with a semi-supervised method:
    # every training image not in the labeled list.
    labeled: Optional[str] = None
    unlabeled: Optional[str] = None
    # Generic "folder" dataset: image folder (or list file) and optional mask folder.
    images: Optional[str] = None
    masks: Optional[str] = None
    val_images: Optional[str] = None
    val_masks: Optional[str] = None
    unlabeled_images: Optional[str] = None
    class_names: Optional[list] = None
    # pixels: masks train (L_s on labels); tags: image-level labels only (weakly-supervised methods
    # afa, afa_u2pl_plus): every training sample carries a multi-hot `tags` vector, its mask (if any)
    # only scores the CAM pseudo-labels (u2plus/data/tags.py)
    supervision: str = "pixels"
    # with supervision=tags: a JSON file {"image id": [train ids]}; null = the dataset's own tag file
    # (CCP tags.json) or the classes of each image's mask (VOC SegmentationClassAug)
    tags: Optional[str] = None
    # VOC: "classic" (SegmentationClass) or "blender" (SegmentationClassAug)
    voc_variant: str = "classic"
    # Fixed pre-resize of every image and mask (0.5 = half resolution), before augmentation.
    resize_factor: float = 1.0
    # Or a fixed size [height, width] (wins over resize_factor), e.g. GTA5 at 720x1280 (DA).
    resize: Optional[list] = None
    crop_size: list = field(default_factory=lambda: [321, 321])  # [height, width]
    scale_range: list = field(default_factory=lambda: [0.5, 2.0])
    hflip: bool = True
    # Strong augmentation (unlabeled images of semi-supervised methods).
    color_jitter: list = field(default_factory=lambda: [0.5, 0.5, 0.5, 0.25])
    color_jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: float = 0.5
    # Normalisation; null = the chosen encoder's pretrained normalisation.
    mean: Optional[list] = None
    std: Optional[list] = None
    batch_size: int = 8  # labeled images per step (global, over all processes)
    unlabeled_batch_size: int = 8  # unlabeled images per step (global)
    num_workers: int = 2
    validate: bool = True  # check every file (decodes, sizes, label values) before training
    # Domain-adaptive setting (methods whose streams are ``source`` and ``target``): the labeled
    # source domain and the unlabeled target domain, on which evaluation runs. Unused otherwise.
    source: DomainConfig = field(default_factory=DomainConfig)
    target: DomainConfig = field(default_factory=DomainConfig)


@dataclass
class ModelConfig:
    # any timm features_only CNN (resnet18/50/101, tf_efficientnet_lite0, ...) or mit_b0..mit_b5
    # (SegFormer's Mix Transformer from segmentation-models-pytorch, u2plus/models/mit.py; output
    # stride 32, or 16 with AFA's last stage at stride 16)
    encoder: str = "tf_efficientnet_lite0"
    # deeplabv3plus | segformer (the SegFormer MLP head, the WS recipes) | daformer (DA recipes)
    decoder: str = "deeplabv3plus"
    # "imagenet": bundled offline weights where available; "none": random init;
    # otherwise a path to a local .pth/.safetensors state dict for the encoder.
    pretrained: str = "imagenet"
    output_stride: int = 16
    decoder_channels: int = 256
    aspp_rates: list = field(default_factory=lambda: [6, 12, 18])
    aspp_separable: bool = False
    aspp_dropout: float = 0.1
    # normalisation of ASPP's image-pooling branch: none | groupnorm | batchnorm (the original,
    # whose running variance collapses over small batches; see models/deeplabv3plus.py)
    aspp_pooling_norm: str = "none"
    # DAFormer decoder: dilation rates of its parallel depthwise-separable fusion convolutions
    fusion_rates: list = field(default_factory=lambda: [1, 6, 12, 18])
    rep_head: bool = True
    rep_dim: int = 256
    sync_bn: bool = False  # SyncBatchNorm across processes (CUDA only)
    # BatchNorm layers keep their running statistics while training. freeze_bn: every layer,
    # the decoder's freshly initialised ones too (for fine-tuning a trained model, or the exact
    # 1-vs-N-process equivalence); freeze_encoder_bn: only the encoder's (pretrained) layers
    # (helps SupOnly; hurt selftrain and u2pl_plus on CamVid, see README "Models")
    freeze_bn: bool = False
    freeze_encoder_bn: bool = False


@dataclass
class TrainConfig:
    max_iters: int = 1000
    epochs: Optional[float] = None  # if set, max_iters = epochs * iterations per epoch
    optimizer: str = "sgd"  # sgd | adamw
    lr: float = 0.01
    head_lr_mult: float = 10.0  # decoder and heads
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_schedule: str = "poly"  # poly | linear | constant
    poly_power: float = 0.9
    warmup_iters: int = 0
    warmup_ratio: float = 1e-6
    ohem: bool = False
    ohem_thresh: float = 0.7
    ohem_min_kept: int = 100000
    # L_s class weights: null (plain mean), "median_frequency" (computed from the labeled
    # set's masks before training) or a list of C positive numbers; not with ohem
    class_weights: Any = None
    amp: str = "off"  # off | bf16 | fp16 (autocast; fp16 adds a GradScaler); losses stay fp32
    channels_last: bool = False  # NHWC memory format for model and images (faster on GPUs)
    # Initial weights of the network from another run: its last.pt or its folder. The model that
    # run evaluated (its EMA teacher, or its student) initialises the student (and the teacher);
    # step, optimiser and schedule start afresh. E.g. a semi-supervised stage after a SupOnly run.
    init_from: Optional[str] = None
    # A semi-supervised run may take its supervised warm-up from a SupOnly run with the same
    # seed, labeled batches and schedule: warmup_from = that run's checkpoint at a step inside
    # this run's warm-up (save_at keeps one: step_<k>.pt beside last.pt). The run continues from
    # it exactly as if it had trained those steps itself (the teacher is a copy of the student).
    warmup_from: Optional[str] = None
    save_at: list = field(default_factory=list)  # steps at which to keep step_<k>.pt
    checkpoint_every: int = 200
    eval_every: int = 0  # 0: only at the end; else val mIoU every N steps (the curve in metrics.json)
    log_every: int = 10
    deterministic: bool = False
    num_threads: int = 0  # 0: leave torch's default


@dataclass
class EvalConfig:
    mode: str = "whole"  # whole | center_crop | sliding | multiscale
    crop_size: list = field(default_factory=lambda: [513, 513])
    stride: Optional[list] = None  # sliding window stride; None = 2/3 of the crop
    scales: list = field(default_factory=lambda: [0.5, 0.75, 1.0, 1.25, 1.5, 1.75])
    flip: bool = True
    batch_size: int = 1
    classes: Optional[list] = None  # train ids in the mIoU (null: all), e.g. SYNTHIA's 16
    # further mIoUs, each over a list of train ids, reported as mIoU<count> (SYNTHIA's mIoU13)
    class_subsets: list = field(default_factory=list)
    # the final evaluation (and `u2plus eval`) also reports the predictions after a dense CRF
    # (pydensecrf2: pip install 'u2plus[crf]'; u2plus/engine/crf.py) under "crf"
    crf: bool = False


@dataclass
class MethodConfig(CriterionConfig, WSCriterionConfig):
    """Method and its ablation switches (paper Tables III-X, XIV): the recipe's own keys below,
    every knob of the U2PL+ terms from :class:`u2plus.criterion.CriterionConfig` (entropy
    partition, SCE, prototypes, contrastive loss) and of the weakly-supervised terms from
    :class:`u2plus.ws_criterion.WSCriterionConfig` (CAMs, refinement, thresholds, Eq. 29-31).
    ``name`` picks a preset (``METHOD_PRESETS``); keys set in a config file or override win over
    the preset."""

    # semi-supervised: suponly | selftrain | u2pl | u2pl_plus; domain-adaptive: source_only |
    # daformer | daformer_u2pl_plus; weakly-supervised (data.supervision=tags): afa | afa_u2pl_plus
    name: str = "suponly"
    ema_momentum: float = 0.99  # max EMA momentum of the teacher (the DA presets: 0.999)
    eval_teacher: bool = True  # evaluate / export the EMA teacher (else the student)
    sup_only_epochs: float = 0.0  # first epochs train with L_s alone
    # the same as a share of train.max_iters (the later of the two counts): the weakly-supervised
    # recipes train the classifier alone for the first 0.3 (AFA: 6,000 of 20,000 iterations)
    sup_only_fraction: float = 0.0
    # true (docs/method.md step 11): during those epochs the teacher is a copy of the student and the
    # EMA warm-up of m_t counts from the first semi-supervised step, as in the reference code;
    # false: m_t counts from step 0, so the first teacher averages the untrained early students
    # (identical when sup_only_epochs = 0)
    ema_from_semi_start: bool = True
    # m_t = min(1 - 1/(t + 1), ema_momentum) from the first semi-supervised step (docs/method.md step 11);
    # false: ema_momentum at once (a teacher that starts trained, e.g. train.init_from, then does
    # not follow the student's first semi-supervised updates)
    ema_ramp: bool = True
    # CutMix of the strong view
    cutmix_prob: float = 0.5
    cutmix_area: list = field(default_factory=lambda: [0.02, 0.4])
    # DAFormer (domain-adaptive methods): pseudo-labels weighted by the share of target pixels
    # whose teacher confidence exceeds pseudo_threshold, 0 in the top / bottom rows given here
    pseudo_threshold: float = 0.968
    pseudo_weight_ignore_rows: list = field(default_factory=lambda: [0, 0])
    # ImageNet feature distance on source images: weight, classes (null: every pixel), and the
    # share of a feature pixel's label pixels its majority class needs
    fd_lambda: float = 0.005
    fd_classes: Optional[list] = None
    fd_min_ratio: float = 0.75


# What each method name means: the switches it turns off relative to the full U2PL+.
METHOD_PRESETS: dict[str, dict] = {
    "suponly": {},
    # mean teacher + CutMix + entropy-filtered pseudo-labels with CE: the paper's CutMix baseline
    "selftrain": {"contrastive": False, "prototype_denoising": False, "sce_xi2": 0.0},
    # conference U2PL: L_c with queues, DPA, PRT; CE; no PD; in-batch prototypes
    "u2pl": {"prototype_denoising": False, "prototype_momentum": 0.0, "sce_xi2": 0.0},
    "u2pl_plus": {},
    # domain-adaptive (docs/method.md, "Domain-adaptive setting"): the student on the source alone
    "source_only": {},
    # DAFormer: EMA teacher, ClassMix, confidence-weighted pseudo-labels, RCS, feature distance
    "daformer": {"contrastive": False, "prototype_denoising": False, "ema_momentum": 0.999},
    # DAFormer + U2PL+'s L_c (with PD and momentum prototypes) on the ClassMixed target images;
    # DAFormer's weighted CE stays the pseudo-label loss, so the criterion's L_u is off (eta 0)
    "daformer_u2pl_plus": {"eta": 0.0, "ema_momentum": 0.999},
    # weakly supervised (data.supervision=tags): AFA's single-stage recipe, and U2PL+ on it (+ L_c, Eq. 29-31)
    "afa": {"contrastive": False},
    "afa_u2pl_plus": {},
}


@dataclass
class Config:
    seed: int = 0
    out_dir: str = "runs/default"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # Resume: "auto" = continue from out_dir/last.pt when it exists; or a checkpoint path.
    resume: Optional[str] = None
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    method: MethodConfig = field(default_factory=MethodConfig)


def _all_keys(node: Any, prefix: str = "") -> list[str]:
    keys = []
    if isinstance(node, DictConfig):
        for k in node.keys():
            full = f"{prefix}{k}"
            keys.append(full)
            keys.extend(_all_keys(node[k], full + "."))
    return keys


def _unknown_key_error(key: str, where: str) -> ConfigError:
    known = _all_keys(OmegaConf.structured(Config))
    hint = difflib.get_close_matches(key, known, n=1)
    msg = f"unknown config key '{key}' in {where}"
    if hint:
        msg += f" (did you mean '{hint[0]}'?)"
    return ConfigError(msg)


def _merge(base: DictConfig, other: DictConfig, where: str) -> DictConfig:
    for key in _all_keys(other):
        if OmegaConf.select(base, key, default="__missing__") == "__missing__":
            raise _unknown_key_error(key, where)
    try:
        return OmegaConf.merge(base, other)
    except (ConfigKeyError, ConfigAttributeError) as e:
        raise _unknown_key_error(str(getattr(e, "full_key", e)), where) from None
    except OmegaConfBaseException as e:
        raise ConfigError(f"invalid value in {where}: {e.msg if hasattr(e, 'msg') else e}") from None


def _load_yaml(path: Path, seen: tuple = ()) -> list[tuple[DictConfig, str]]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.resolve() in seen:
        raise ConfigError(f"circular _base_ in {path}")
    try:
        node = OmegaConf.load(path)
    except Exception as e:  # yaml syntax errors
        raise ConfigError(f"cannot parse config {path}: {e}") from None
    layers: list[tuple[DictConfig, str]] = []
    bases = node.pop("_base_", None)
    if bases is not None:
        for b in [bases] if isinstance(bases, str) else list(bases):
            layers += _load_yaml((path.parent / b), seen + (path.resolve(),))
    layers.append((node, str(path)))
    return layers


def load_config(path: Optional[str | Path] = None, overrides: Optional[list[str]] = None) -> DictConfig:
    """Build the config: defaults, then the YAML file (with its ``_base_`` chain), then overrides."""
    layers = _load_yaml(Path(path)) if path is not None else []
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        key = item.split("=", 1)[0]
        try:
            layers.append((OmegaConf.from_dotlist([item]), f"override '{key}'"))
        except Exception as e:
            raise ConfigError(f"cannot parse override '{item}': {e}") from None
    cfg = OmegaConf.structured(Config)
    for node, where in layers:
        cfg = _merge(cfg, node, where)
    # the method's preset sits between the defaults and everything set explicitly
    preset = METHOD_PRESETS.get(cfg.method.name)
    if preset:
        cfg = _merge(OmegaConf.structured(Config), OmegaConf.create({"method": preset}), "method preset")
        for node, where in layers:
            cfg = _merge(cfg, node, where)
    _validate(cfg)
    return cfg


def config_from_checkpoint(state: dict) -> DictConfig:
    """The config a checkpoint was trained with, on top of today's defaults."""
    if "config" not in state:
        raise ConfigError("checkpoint holds no config (was it written by u2plus train?)")
    cfg = _merge(OmegaConf.structured(Config), OmegaConf.create(state["config"]), "checkpoint config")
    _validate(cfg)
    return cfg


def _validate(cfg: DictConfig) -> None:
    if str(cfg.train.amp).lower() == "false":  # YAML reads a bare `off` as the boolean false
        cfg.train.amp = "off"
    choices = {
        "model.decoder": ("deeplabv3plus", "segformer", "daformer"),
        "model.aspp_pooling_norm": ("none", "groupnorm", "batchnorm"),
        "train.optimizer": ("sgd", "adamw"),
        "train.lr_schedule": ("poly", "linear", "constant"),
        "train.amp": ("off", "bf16", "fp16"),
        "eval.mode": ("whole", "center_crop", "sliding", "multiscale"),
        "data.voc_variant": ("classic", "blender"),
        "method.name": tuple(METHOD_PRESETS),
        "method.negatives_from": ("unreliable", "reliable", "both"),
        "method.cls_pooling": ("max", "avg"),
        "data.supervision": ("pixels", "tags"),
    }
    for key, allowed in choices.items():
        value = OmegaConf.select(cfg, key)
        if value not in allowed:
            raise ConfigError(f"{key}={value!r} is not one of {', '.join(allowed)}")
    if cfg.model.output_stride not in (8, 16, 32):
        raise ConfigError(f"model.output_stride={cfg.model.output_stride} must be 8, 16 or 32")
    for key in ("data.crop_size", "eval.crop_size", "data.resize", "data.source.resize", "data.target.resize"):
        v = OmegaConf.select(cfg, key)
        if v is not None and (len(v) != 2 or min(v) <= 0):
            raise ConfigError(f"{key}={list(v)} must be [height, width] with positive values")
    for key in ("eval.classes", "method.fd_classes", *(f"eval.class_subsets[{i}]" for i in range(len(cfg.eval.class_subsets)))):
        ids = OmegaConf.select(cfg, key)
        if ids is not None and not all(isinstance(c, int) and 0 <= c < cfg.data.num_classes for c in ids):
            raise ConfigError(f"{key}={list(ids)} must list train ids in 0..{cfg.data.num_classes - 1}")
    weights = cfg.train.class_weights
    if weights is not None:
        if isinstance(weights, str):
            if weights != "median_frequency":
                raise ConfigError(f"train.class_weights={weights!r} must be null, median_frequency "
                                  "or a list of one positive number per class")
        elif not OmegaConf.is_list(weights) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in weights):
            raise ConfigError(f"train.class_weights={weights} must be null, median_frequency "
                              "or a list of one positive number per class")
        if cfg.train.ohem:
            raise ConfigError("train.class_weights cannot be combined with train.ohem")
    t = cfg.data.source.rcs_temperature
    if t is not None and t <= 0:
        raise ConfigError(f"data.source.rcs_temperature={t} must be positive (null: uniform sampling)")
    if cfg.data.batch_size <= 0:
        raise ConfigError("data.batch_size must be positive")
    m = cfg.method
    if not 0.0 <= m.sup_only_fraction <= 1.0:
        raise ConfigError(f"method.sup_only_fraction={m.sup_only_fraction} must be in [0, 1]")
    if m.cam_bg_threshold > m.cam_fg_threshold:
        raise ConfigError(f"method.cam_bg_threshold={m.cam_bg_threshold} is above "
                          f"method.cam_fg_threshold={m.cam_fg_threshold}")
    if cfg.train.max_iters <= 0 and cfg.train.epochs is None:
        raise ConfigError("train.max_iters must be positive")


def save_config(cfg: DictConfig, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, path)
