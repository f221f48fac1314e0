"""Typed configuration: dataclass defaults, a YAML that names only what differs, dotted overrides.

Every group lives here as a dataclass so that a typo, a wrong type or an impossible value is caught
before any training starts, with a one-line message (UserError, exit code 2).
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

from sharpshift.errors import UserError
from sharpshift.config.shift import FourierConfig, RSAConfig
from sharpshift.config.dsa import DSAConfig
from sharpshift.config.sharpness import MESAConfig, SAFConfig, SAMConfig
from sharpshift.config.amcl import AMCLConfig
from sharpshift.config.robustness import RobustnessConfig
from sharpshift.config.report import ReportConfig

# Each base method's values for the MethodConfig fields a config leaves empty, applied inside load_config.
# A new method adds its row with sharpshift.methods.register_method; the method names are this table's keys.
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "simclr": dict(proj_hidden_dim=512, proj_output_dim=128, temperature=0.5),
    "moco": dict(proj_hidden_dim=512, proj_output_dim=128, temperature=0.2, momentum_base=0.99, momentum_final=1.0,
                 queue_size=4096),
    "byol": dict(proj_hidden_dim=1024, proj_output_dim=128, pred_hidden_dim=1024, momentum_base=0.99,
                 momentum_final=1.0),
    "barlow": dict(proj_hidden_dim=1024, proj_output_dim=1024, barlow_lambda=0.005, barlow_scale=0.1),
    "simsiam": dict(proj_hidden_dim=512, proj_output_dim=512, pred_hidden_dim=128),
}
CONFIG_DIRS = (Path.cwd() / "configs", Path(__file__).resolve().parents[3] / "configs")


@dataclass
class DataConfig:
    dataset: str = "fashion-mnist"
    data_dir: Optional[str] = None  # also --data-dir, then $SHARPSHIFT_DATA, then the Debian package folder
    batch_size: int = 256  # per process
    subset: int = 0  # train on a seeded random subset of this many images (0 = all)
    test_subset: int = 0  # evaluate on a subset of the test split (0 = all)
    val_fraction: float = 0.1  # hold out this share of the train split (fixed, seeded) for every choice; 0: none
    on_bad_image: str = "skip"  # image folders: skip (and count) or fail on unreadable files
    image_size: int = 0  # image folders and streams: resize every image to this square size (0: as stored)
    # memory: decode the whole split into one tensor; stream: read shards made by `sharpshift prepare` from
    # stream_dir, decoding each batch (in num_workers processes); auto: stream when the decoded train split
    # would exceed memory_budget_gb (docs/streaming.md)
    storage: str = "memory"
    stream_dir: Optional[str] = None
    memory_budget_gb: float = 8.0
    num_workers: int = 0  # DataLoader worker processes that decode streamed batches (0: in the training process)


@dataclass
class ViewsConfig:
    """Batched augmentation. Per-view probabilities left empty take the method's recipe defaults."""

    recipe: str = "auto"  # auto (the method's own), symmetric (SimCLR), asymmetric (BYOL)
    num_views: int = 2
    crop_scale: list[float] = field(default_factory=lambda: [0.2, 1.0])
    crop_ratio: list[float] = field(default_factory=lambda: [0.75, 4 / 3])
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2  # colour images only
    hue: float = 0.1  # colour images only
    grayscale_p: float = 0.2  # colour images only
    blur_p: Optional[list[float]] = None  # per view; recipe default
    blur_sigma: list[float] = field(default_factory=lambda: [0.1, 2.0])  # at 32 px; scaled with the image size
    solarize_p: Optional[list[float]] = None  # per view; recipe default


@dataclass
class ModelConfig:
    backbone: str = "convnet"  # convnet, resnet18, resnet34, resnet50
    width: int = 32  # convnet: channels of the first block (doubled per block)
    cifar_stem: bool = True  # resnet: 3x3 stride-1 stem, no max-pool (small images)
    channels_last: bool = True


@dataclass
class MethodConfig:
    """Base-method settings. A value left empty (null) takes the method's own default."""

    name: str = "simclr"  # simclr, moco, byol, barlow, simsiam
    proj_hidden_dim: Optional[int] = None
    proj_output_dim: Optional[int] = None
    pred_hidden_dim: Optional[int] = None  # byol, simsiam
    temperature: Optional[float] = None  # simclr, moco
    momentum_base: Optional[float] = None  # moco, byol: EMA decay at step 0 ...
    momentum_final: Optional[float] = None  # ... rising to this value by the last step (cosine)
    queue_size: Optional[int] = None  # moco
    barlow_lambda: Optional[float] = None  # barlow: off-diagonal weight
    barlow_scale: Optional[float] = None  # barlow: overall loss scale


@dataclass
class OptimConfig:
    name: str = "sgd"  # sgd, lars, adamw
    lr: float = 0.3  # absolute learning rate (not scaled by batch size)
    weight_decay: float = 1e-4
    momentum: float = 0.9  # sgd, lars
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adamw
    lars_eta: float = 0.02
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.0  # cosine decays to lr * min_lr_ratio
    exclude_bias_norm: bool = True  # no weight decay (and no LARS scaling) on biases and norm layers
    grad_clip: float = 0.0  # max global grad norm; 0 = off
    probe_lr: float = 1e-3  # the online linear probe's own Adam


@dataclass
class TrainerConfig:
    max_epochs: int = 10
    max_steps: int = -1  # stop earlier after this many steps (-1 = off)
    precision: str = "auto"  # auto (bf16 where the CPU has bf16 units and a probe finds it faster), 32, bf16-mixed, ...
    accelerator: str = "auto"
    devices: Any = 1
    num_nodes: int = 1
    strategy: str = "auto"
    num_threads: int = 0  # torch intra-op threads (0 = torch's default)
    flush_denormal: bool = True  # CPU: flush denormal floats to zero (faster bf16 steps, see docs/benchmarks.md)
    log_every_n_steps: int = 20
    progress_bar: bool = True
    sync_batchnorm: bool = False
    checkpoint_every_n_steps: int = 100  # also one at the end; 0 = only at the end (see sharpshift.checkpoint)
    keep_checkpoints: int = 3  # newest step checkpoints kept (last.ckpt is always kept)
    on_nonfinite: str = "stop"  # a NaN/inf loss: stop (naming the step and term) or skip the step
    loggers: list[str] = field(default_factory=lambda: ["csv", "tensorboard"])  # and mlflow (sharpshift.tracking)
    mlflow_uri: Optional[str] = None  # MLflow tracking URI (None: sqlite:///OUT_DIR/mlflow.db)
    mlflow_experiment: str = "sharpshift"


@dataclass
class EvalConfig:
    knn_k: int = 200
    knn_temperature: float = 0.1
    knn_every_n_epochs: int = 1  # online kNN monitor (0 = off)
    knn_monitor_train: int = 10000  # train images used as the monitor's memory bank
    online_probe: bool = True
    linear_max_iter: int = 100  # offline probe: L-BFGS iterations
    linear_weight_decay: float = 1e-4
    after_training: bool = True  # run the offline evaluation when pretraining ends


@dataclass
class Config:
    name: str = "run"
    seed: int = 0
    out_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    views: ViewsConfig = field(default_factory=ViewsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    # add-on groups (each defined next to its code, with a check() that raises UserError): one line each
    fourier: FourierConfig = field(default_factory=FourierConfig)
    rsa: RSAConfig = field(default_factory=RSAConfig)
    dsa: DSAConfig = field(default_factory=DSAConfig)
    sam: SAMConfig = field(default_factory=SAMConfig)
    saf: SAFConfig = field(default_factory=SAFConfig)
    mesa: MESAConfig = field(default_factory=MESAConfig)
    amcl: AMCLConfig = field(default_factory=AMCLConfig)
    robustness: RobustnessConfig = field(default_factory=RobustnessConfig)
    report: ReportConfig = field(default_factory=ReportConfig)


def _all_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    for f in fields(cls):
        key = prefix + f.name
        keys.append(key)
        default = f.default_factory() if callable(f.default_factory) else f.default  # type: ignore[misc]
        if is_dataclass(default):
            keys += _all_keys(type(default), key + ".")
    return keys


def find_config(name_or_path: str) -> Path:
    """A path, or the name of a shipped config (with or without .yaml)."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    stem = p.name[:-5] if p.name.endswith(".yaml") else p.name
    for d in CONFIG_DIRS:
        if (d / f"{stem}.yaml").is_file():
            return d / f"{stem}.yaml"
    raise UserError(f"config {name_or_path!r} not found; give a YAML path or one of: {', '.join(list_configs())}")


def list_configs() -> list[str]:
    for d in CONFIG_DIRS:
        if d.is_dir():
            return sorted(p.stem for p in d.glob("*.yaml"))
    return []


def _explain(e: OmegaConfBaseException, source: str) -> UserError:
    key = getattr(e, "full_key", None) or ""
    if isinstance(e, (ConfigKeyError, ConfigAttributeError)) and key:
        close = difflib.get_close_matches(key, _all_keys(Config), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else "run `sharpshift configs --keys` for the valid keys"
        return UserError(f"unknown config key {key!r} in {source}; {hint}")
    if isinstance(e, ValidationError) and key:
        msg = str(e).splitlines()[0]
        return UserError(f"bad value for {key!r} in {source}: {msg}; give a value of the right type")
    return UserError(f"invalid config in {source}: {str(e).splitlines()[0]}")


def load_config(path: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults <- YAML file <- dotted overrides, then validated. Raises UserError."""
    cfg: DictConfig = OmegaConf.structured(Config)
    if path:
        file = find_config(path)
        try:
            loaded = OmegaConf.load(file)
        except Exception as e:  # yaml errors come in many types
            raise UserError(f"cannot parse {file}: {str(e).splitlines()[0]}; fix the YAML syntax") from None
        if not isinstance(loaded, DictConfig):
            raise UserError(f"{file} must hold a mapping of config groups, not a {type(loaded).__name__}")
        try:
            cfg = OmegaConf.merge(cfg, loaded)
        except OmegaConfBaseException as e:
            raise _explain(e, str(file)) from None
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override {item!r} is not key=value; write e.g. optim.lr=0.1")
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([item]))
        except OmegaConfBaseException as e:
            raise _explain(e, f"override {item!r}") from None
    config: Config = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    validate(config)
    resolve_method_defaults(config)
    return config


def resolve_method_defaults(cfg: Config) -> None:
    """Fill method fields left empty with the chosen method's own defaults (saved resolved in the run)."""
    for key, value in METHOD_DEFAULTS[cfg.method.name].items():
        if getattr(cfg.method, key) is None:
            setattr(cfg.method, key, value)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


def validate(c: Config) -> None:
    """Impossible values, each with the fix. Dataset- and method-dependent checks live with those."""
    from sharpshift.data.registry import known_datasets

    _check(c.data.dataset in known_datasets(),
           f"unknown dataset {c.data.dataset!r}; set data.dataset to one of {known_datasets()}")
    _check(c.method.name in METHOD_DEFAULTS,
           f"unknown method {c.method.name!r}; set method.name to one of {tuple(METHOD_DEFAULTS)}")
    _check(c.data.batch_size >= 2, f"data.batch_size must be at least 2, got {c.data.batch_size}")
    _check(c.data.subset >= 0 and c.data.test_subset >= 0, "data.subset and data.test_subset must be >= 0")
    _check(0 <= c.data.val_fraction < 1, f"data.val_fraction must be in [0, 1), got {c.data.val_fraction}")
    _check(c.data.on_bad_image in ("skip", "fail"), "data.on_bad_image must be skip or fail")
    _check(c.data.storage in ("memory", "stream", "auto"), f"data.storage must be memory, stream or auto, got "
           f"{c.data.storage!r}")
    _check(c.data.num_workers >= 0, f"data.num_workers must be >= 0, got {c.data.num_workers}")
    _check(c.data.image_size >= 0, f"data.image_size must be >= 0 (0: as stored), got {c.data.image_size}")
    _check(c.data.memory_budget_gb > 0, f"data.memory_budget_gb must be > 0, got {c.data.memory_budget_gb}")
    _check(c.optim.name in ("sgd", "lars", "adamw"), f"unknown optimizer {c.optim.name!r}; set optim.name to sgd, lars or adamw")
    _check(c.optim.lr > 0, f"optim.lr must be > 0, got {c.optim.lr}")
    _check(c.optim.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {c.optim.weight_decay}")
    _check(c.optim.warmup_epochs >= 0, "optim.warmup_epochs must be >= 0")
    _check(0 <= c.optim.min_lr_ratio <= 1, "optim.min_lr_ratio must be in [0, 1]")
    _check(c.optim.grad_clip >= 0, "optim.grad_clip must be >= 0 (0 = off)")
    _check(c.optim.probe_lr > 0, "optim.probe_lr must be > 0")
    _check(c.trainer.max_epochs >= 1, f"trainer.max_epochs must be >= 1, got {c.trainer.max_epochs}")
    _check(c.trainer.max_steps == -1 or c.trainer.max_steps >= 1, "trainer.max_steps must be -1 (off) or >= 1")
    _check(c.trainer.precision in ("auto", "32", "32-true", "bf16-mixed", "16-mixed", "bf16-true"),
           f"unknown trainer.precision {c.trainer.precision!r}; use auto, 32, bf16-mixed or 16-mixed")
    _check(c.trainer.log_every_n_steps >= 1, "trainer.log_every_n_steps must be >= 1")
    _check(c.trainer.checkpoint_every_n_steps >= 0, "trainer.checkpoint_every_n_steps must be >= 0 (0 = only at the end)")
    _check(c.trainer.keep_checkpoints >= 1, f"trainer.keep_checkpoints must be >= 1, got {c.trainer.keep_checkpoints}")
    _check(c.trainer.on_nonfinite in ("stop", "skip"), f"trainer.on_nonfinite must be stop or skip, got {c.trainer.on_nonfinite!r}")
    _check(c.model.backbone in ("convnet", "resnet18", "resnet34", "resnet50"),
           f"unknown backbone {c.model.backbone!r}; set model.backbone to convnet, resnet18, resnet34 or resnet50")
    _check(c.model.width >= 1, "model.width must be >= 1")
    v = c.views
    _check(v.recipe in ("auto", "symmetric", "asymmetric"), f"unknown views.recipe {v.recipe!r}; use auto, symmetric or asymmetric")
    _check(v.num_views >= 2, "views.num_views must be >= 2")
    _check(len(v.crop_scale) == 2 and 0 < v.crop_scale[0] <= v.crop_scale[1] <= 1,
           f"views.crop_scale must be [min, max] with 0 < min <= max <= 1, got {v.crop_scale}")
    _check(len(v.crop_ratio) == 2 and 0 < v.crop_ratio[0] <= v.crop_ratio[1], "views.crop_ratio must be [min, max] > 0")
    for key in ("flip_p", "jitter_p", "grayscale_p"):
        _check(0 <= getattr(v, key) <= 1, f"views.{key} must be a probability in [0, 1]")
    for key in ("blur_p", "solarize_p"):
        probs = getattr(v, key)
        _check(probs is None or all(0 <= p <= 1 for p in probs), f"views.{key} must hold probabilities in [0, 1]")
    _check(c.eval.knn_k >= 1 and c.eval.knn_temperature > 0, "eval.knn_k must be >= 1 and eval.knn_temperature > 0")
    m = c.method
    for key in ("proj_hidden_dim", "proj_output_dim", "pred_hidden_dim", "queue_size"):
        val = getattr(m, key)
        _check(val is None or val >= 1, f"method.{key} must be >= 1, got {val}")
    _check(m.temperature is None or m.temperature > 0, f"method.temperature must be > 0, got {m.temperature}")
    for key in ("momentum_base", "momentum_final"):
        val = getattr(m, key)
        _check(val is None or 0 <= val <= 1, f"method.{key} must be in [0, 1], got {val}")


    for f in fields(c):  # add-on groups validate themselves
        group = getattr(c, f.name)
        if hasattr(group, "check"):
            group.check()


def to_yaml(c: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(c))


def from_yaml_file(path: Path) -> Config:
    """Read a resolved config saved in a run folder."""
    if not path.is_file():
        raise UserError(f"{path} not found; is {path.parent} a sharpshift run folder?")
    return load_config(str(path))
