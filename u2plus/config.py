"""Configuration: typed defaults (dataclasses), YAML files and ``key=value`` overrides.

One schema for every setting and every process count. Unknown keys are errors that name the
key (with a suggestion), so a typo never silently falls back to a default.

Resolution order: schema defaults < ``_base_`` files (recursively) < the YAML file < CLI overrides.
"""

from __future__ import annotations

import difflib
import math
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
    # a NaN or infinite loss: "stop" ends the run with a report (nonfinite_report.json in the run
    # folder); "skip" drops that step's update, counts it (train/skipped_steps) and stops when
    # nonfinite_skip_limit steps in a row were non-finite
    nonfinite: str = "stop"
    nonfinite_skip_limit: int = 5
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
    # beyond the paper (Laine & Aila 2017, Mean Teacher): the unlabeled losses (L_u + lambda_c L_c)
    # of the semi-supervised recipes are multiplied by exp(-5 (1 - t/N)^2) for the first N steps
    # after the supervised-only warm-up (t counted from its end), then by 1. It softens the shock
    # of switching them on at full weight onto a converged supervised student. 0: off (the paper)
    unsup_rampup_steps: int = 0
    # beyond the paper, semi-supervised recipes: for the first N steps after the supervised-only
    # warm-up, L_c's gradient stops at the representation head (the head reads the decoder's
    # features detached). The warm-up never trains that head (L_c is off), so it starts random
    # onto a trained network; this lets it learn the feature space before its gradient reaches the
    # decoder and encoder. L_u, the pseudo-labels, the queues and the prototypes are untouched. 0: off
    rep_head_detach_steps: int = 0
    # CutMix of the strong view
    cutmix_prob: float = 0.5
    cutmix_area: list = field(default_factory=lambda: [0.02, 0.4])
    # beyond the paper (AEL's adaptive copy-paste, Hu et al. 2021), semi-supervised recipes: with
    # this probability an unlabeled image of the strong view gets the pixels of rare_paste_classes
    # classes of a labeled image pasted on it after CutMix, their labels taken as reliable
    # pseudo-labels; the classes are drawn with weight 1 - the teacher's running confidence on
    # labeled pixels of the class (EMA with rare_paste_momentum), so the classes it gets wrong come
    # most often. 0: off (the paper's recipe)
    rare_paste_prob: float = 0.0
    rare_paste_classes: int = 2
    rare_paste_momentum: float = 0.99
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
    # A new run into an out_dir that holds one (last.pt) is refused unless overwrite=true, which
    # deletes that run's last.pt, metrics.json and tb/ first (u2plus/engine/run_folder.py)
    overwrite: bool = False
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
        first_line = str(getattr(e, "msg", e)).splitlines()[0]  # omegaconf appends full_key, types, ...
        raise ConfigError(f"invalid value in {where}: {first_line}") from None


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


def _override_layers(overrides: Optional[list[str]]) -> list[tuple[DictConfig, str]]:
    layers = []
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        key = item.split("=", 1)[0]
        try:
            layers.append((OmegaConf.from_dotlist([item]), f"override '{key}'"))
        except Exception as e:
            raise ConfigError(f"cannot parse override '{item}': {e}") from None
    return layers


def _resolve(layers: list[tuple[DictConfig, str]]) -> DictConfig:
    """Defaults, then the method's preset, then ``layers`` in order; checked."""
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


def load_config(path: Optional[str | Path] = None, overrides: Optional[list[str]] = None) -> DictConfig:
    """Build the config: defaults, then the YAML file (with its ``_base_`` chain), then overrides."""
    layers = _load_yaml(Path(path)) if path is not None else []
    cfg = _resolve(layers + _override_layers(overrides))
    _check_streams(cfg)
    return cfg


def config_from_checkpoint(state: dict, overrides: Optional[list[str]] = None) -> DictConfig:
    """The config a checkpoint was trained with, on top of today's defaults, plus ``overrides``."""
    if "config" not in state:
        raise ConfigError("checkpoint holds no config (was it written by u2plus train?)")
    where = "checkpoint config" + (f" (u2plus {state['u2plus']})" if "u2plus" in state else "")
    return _resolve([(OmegaConf.create(state["config"]), where), *_override_layers(overrides)])


# What a checkpoint's weights are: their names and shapes, and what they compute (the DAFormer
# decoder's fusion rates; the weakly-supervised heads, which data.supervision=tags adds, and their pooling).
MODEL_KEYS = ("data.num_classes", "model.encoder", "model.decoder", "model.output_stride",
              "model.decoder_channels", "model.aspp_rates", "model.aspp_separable", "model.aspp_pooling_norm",
              "model.fusion_rates", "model.rep_head", "model.rep_dim", "data.supervision", "method.cls_pooling")


def config_differences(theirs: DictConfig, ours: DictConfig, keys=MODEL_KEYS) -> str:
    """``key A vs B`` (theirs vs ours) for each of ``keys`` where the configs differ,
    comma-separated; empty when they agree."""
    diffs = []
    for key in keys:
        a, b = (OmegaConf.select(c, key) for c in (theirs, ours))
        a, b = (OmegaConf.to_container(v) if OmegaConf.is_config(v) else v for v in (a, b))
        if a != b:
            diffs.append(f"{key} {a} vs {b}")
    return ", ".join(diffs)


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
        "train.nonfinite": ("stop", "skip"),
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
    subsets = (f"eval.class_subsets[{i}]" for i in range(len(cfg.eval.class_subsets)))
    for key in ("eval.classes", "method.fd_classes", *subsets):
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
    if cfg.train.max_iters <= 0 and cfg.train.epochs is None:
        raise ConfigError(f"train.max_iters={cfg.train.max_iters} must be >= 1 (or set train.epochs)")
    if cfg.overwrite and cfg.resume == "auto":
        raise ConfigError("overwrite=true starts the run afresh; it cannot be combined with resume=auto")
    for key, (low, high, bounds) in RANGES.items():
        value = OmegaConf.select(cfg, key)
        if value is not None:
            _check_range(key, value, low, high, bounds)
    for key in ("data.scale_range", "method.cutmix_area"):
        v = list(OmegaConf.select(cfg, key))
        if len(v) != 2 or v[0] > v[1]:
            raise ConfigError(f"{key}={v} must be [low, high] with low <= high")
    for low_key, high_key in ORDERED:
        low, high = OmegaConf.select(cfg, low_key), OmegaConf.select(cfg, high_key)
        if low > high:
            raise ConfigError(f"{low_key}={low} must be <= {high_key}={high}")


INF = math.inf
# key: (low, high, bounds) with "[" / "]" closed and "(" / ")" open; lists are checked value by value
RANGES = {
    "train.lr": (0, INF, "()"), "train.head_lr_mult": (0, INF, "()"), "train.momentum": (0, 1, "[)"),
    "train.weight_decay": (0, INF, "[)"), "train.poly_power": (0, INF, "[)"), "train.warmup_iters": (0, INF, "[)"),
    "train.warmup_ratio": (0, 1, "[]"), "train.ohem_thresh": (0, 1, "(]"), "train.ohem_min_kept": (0, INF, "[)"),
    "train.epochs": (0, INF, "()"), "train.checkpoint_every": (0, INF, "[)"), "train.eval_every": (0, INF, "[)"),
    "train.log_every": (1, INF, "[)"), "train.num_threads": (0, INF, "[)"),
    "train.nonfinite_skip_limit": (1, INF, "[)"), "train.save_at": (1, INF, "[)"),
    "data.batch_size": (1, INF, "[)"), "data.unlabeled_batch_size": (1, INF, "[)"), "data.num_workers": (0, INF, "[)"),
    "data.resize_factor": (0, INF, "()"), "data.scale_range": (0, INF, "()"), "data.color_jitter": (0, INF, "[)"),
    "data.color_jitter_p": (0, 1, "[]"), "data.grayscale_p": (0, 1, "[]"), "data.blur_p": (0, 1, "[]"),
    "data.std": (0, INF, "()"),
    "model.decoder_channels": (1, INF, "[)"), "model.rep_dim": (1, INF, "[)"), "model.aspp_rates": (1, INF, "[)"),
    "model.aspp_dropout": (0, 1, "[)"),
    "eval.batch_size": (1, INF, "[)"), "eval.scales": (0, INF, "()"), "eval.stride": (1, INF, "[)"),
    "method.ema_momentum": (0, 1, "[]"), "method.sup_only_epochs": (0, INF, "[)"), "method.cutmix_prob": (0, 1, "[]"),
    "method.cutmix_area": (0, 1, "(]"), "method.alpha0": (0, 1, "[)"), "method.eta": (0, INF, "[)"),
    "method.sce_xi1": (0, INF, "[)"), "method.sce_xi2": (0, INF, "[)"), "method.prototype_momentum": (0, 1, "[]"),
    "method.alignment_momentum": (0, 1, "[)"), "method.rare_paste_prob": (0, 1, "[]"),
    "method.rare_paste_classes": (1, INF, "[)"), "method.rare_paste_momentum": (0, 1, "[)"),
    "method.lambda_c": (0, INF, "[)"), "method.queue_size": (1, INF, "[)"), "method.temperature": (0, INF, "()"),
    "method.num_anchors": (1, INF, "[)"), "method.num_negatives": (1, INF, "[)"), "method.delta_p": (0, 1, "[]"),
    "method.r_l": (1, INF, "[)"), "method.r_h": (1, INF, "[)"),
    # domain-adaptive: rare class sampling, DAFormer's pseudo-label weight and feature distance, its decoder
    "data.source.rcs_temperature": (0, INF, "()"), "data.source.rcs_min_pixels": (0, INF, "[)"),
    "data.source.resize_factor": (0, INF, "()"), "data.target.resize_factor": (0, INF, "()"),
    "method.pseudo_threshold": (0, 1, "[]"), "method.pseudo_weight_ignore_rows": (0, INF, "[)"),
    "method.fd_lambda": (0, INF, "[)"), "method.fd_min_ratio": (0, 1, "[]"), "model.fusion_rates": (1, INF, "[)"),
    # weakly-supervised: the classifier-only start, CAM thresholds, refinement and loss weights
    "method.sup_only_fraction": (0, 1, "[]"), "method.unsup_rampup_steps": (0, INF, "[)"),
    "method.rep_head_detach_steps": (0, INF, "[)"), "method.cam_fg_threshold": (0, 1, "[]"),
    "method.cam_bg_threshold": (0, 1, "[]"), "method.cam_beta": (0, 1, "[]"), "method.par_dilations": (1, INF, "[)"),
    "method.par_iterations": (0, INF, "[)"), "method.par_downscale": (1, INF, "[)"),
    "method.random_walk_power": (1, INF, "[)"), "method.affinity_radius": (1, INF, "[)"),
    "method.seg_weight": (0, INF, "[)"), "method.affinity_weight": (0, INF, "[)"),
}
# (low key, high key): pairs of keys whose values must be ordered
ORDERED = (("method.r_l", "method.r_h"), ("method.cam_bg_threshold", "method.cam_fg_threshold"))


def _check_range(key: str, value, low: float, high: float, bounds: str) -> None:
    def ok(v) -> bool:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return False
        return (v > low if bounds[0] == "(" else v >= low) and (v < high if bounds[1] == ")" else v <= high)

    values = list(value) if OmegaConf.is_list(value) else [value]
    if not all(ok(v) for v in values):
        allowed = (f"{'>' if bounds[0] == '(' else '>='} {low:g}" if high == INF
                   else f"in {bounds[0]}{low:g}, {high:g}{bounds[1]}")
        if OmegaConf.is_list(value):  # untyped lists: numbers of any kind
            shown, what = list(value), "finite numbers"
        else:
            shown, what = value, "an integer" if isinstance(value, int) else "a finite number"
        raise ConfigError(f"{key}={shown} must be {what} {allowed}")


def _check_streams(cfg: DictConfig) -> None:
    """Unlabeled images only for methods that train on them."""
    from .methods import method_class

    if "unlabeled" in method_class(cfg).streams:
        return
    for key in ("data.unlabeled", "data.unlabeled_images"):
        if OmegaConf.select(cfg, key) is not None:
            raise ConfigError(f"{key} is set but method.name={cfg.method.name} trains on labeled images only; "
                              f"set {key}=null or a semi-supervised method ({', '.join(_semi_methods())})")


def _semi_methods() -> list[str]:
    from .methods import METHODS

    return [name for name, cls in METHODS.items() if "unlabeled" in cls.streams]


def save_config(cfg: DictConfig, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, path)
