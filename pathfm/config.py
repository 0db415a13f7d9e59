"""The base experiment config (every key, with DINO's reference defaults), the presets, and
`validate`, which asks each subsystem to check its own keys.

Experiment files in `configs/` start from `base_config()` and change what differs. Defaults follow
facebookresearch/dino main_dino.py (`get_args_parser`) for ViT-S/16; where online patching needs
a notion the reference lacks, it is named here (`steps_per_epoch`: a pseudo-epoch).
"""

from __future__ import annotations

import json
from pathlib import Path

import ml_collections

from pathfm.data.checks import check_crops_config, check_data_config
from pathfm.errors import ConfigError, require
from pathfm.evaluation.online import check_monitor_config
from pathfm.models.checks import check_model_config
from pathfm.parallel.partitioning import DEFAULT_RULES
from pathfm.ssl.registry import check_method_config
from pathfm.train.checks import check_init_from_config, check_training_config

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def base_config() -> ml_collections.ConfigDict:
    """All keys pathfm knows, with the reference defaults (DINO ViT-S/16, 100 epochs)."""
    c = ml_collections.ConfigDict()
    c.mode = "pretrain"
    c.method = "dino"
    c.seed = 0
    c.epochs = 100
    c.steps_per_epoch = 1250  # online patching has no data set epoch: a pseudo-epoch of iterations
    c.batch_size = 512  # global batch over all devices and hosts (DINO: 64 per GPU x 8 GPUs)
    c.log_every_steps = 50
    c.on_nonfinite = "stop"  # a NaN/inf loss or gradient: "stop" (as DINO) or "skip" the update

    c.mesh = ml_collections.ConfigDict()  # devices = data x fsdp; see docs/scaling.md
    c.mesh.data = -1  # data-parallel groups; -1 = all devices / fsdp
    c.mesh.fsdp = 1  # devices that split parameters and optimiser state (ZeRO-3 style)
    c.mesh.rules = (
        DEFAULT_RULES  # (regex over state paths, layout); see pathfm/parallel/partitioning.py
    )
    c.mesh.fsdp_min_size = 2**14  # leaves with fewer elements stay replicated

    c.model = ml_collections.ConfigDict()
    c.model.size = "S"  # T/S/B/L/g or tiny/small/base/large/giant
    c.model.patch_size = 16
    c.model.img_size = 224  # size of the learned position embedding
    c.model.embed_dim = 0  # > 0 overrides the size's width (tiny test models)
    c.model.depth = 0
    c.model.num_heads = 0
    c.model.mlp_ratio = 4.0
    c.model.drop_path_rate = 0.1
    c.model.dtype = "float32"  # or "bfloat16" for matmuls; parameters stay float32
    c.model.layer_scale_init = 0.0  # > 0: LayerScale (DINOv2: 1e-5)
    c.model.num_registers = 0  # register tokens (kaiko's ViT-L/14: 4)
    c.model.no_embed_class = False  # True: no position embedding on CLS/registers (timm DINOv2)
    c.model.ffn = "mlp"  # or "swiglu" (DINOv2 ViT-g)
    c.model.drop_path_uniform = False  # True: every block drops at drop_path_rate (DINOv2)
    c.model.attention = "explicit"  # or "dot_product" (XLA picks the kernel), "cudnn" (GPU, bf16)
    c.model.remat = "none"  # or "block" / "block_dots": recompute blocks in the backward pass
    # Position embeddings at other crop sizes: "official" = DINO/DINOv2's F.interpolate (bicubic,
    # scale factor with the 0.1 offset, no antialias); "timm" = timm's antialiased resampling.
    c.model.pos_interp = "official"
    c.model.init_from = ""  # timm/PyTorch ViT weights (.safetensors/.pth) for the backbone
    c.model.init_prefix = ""  # their keys' prefix in the file, e.g. "teacher.backbone."; "" = auto

    c.dino = ml_collections.ConfigDict()
    c.dino.out_dim = 65536
    c.dino.hidden_dim = 2048
    c.dino.bottleneck_dim = 256
    c.dino.nlayers = 3
    c.dino.norm_last_layer = True
    c.dino.momentum_teacher = 0.996
    c.dino.teacher_temp = 0.04
    c.dino.warmup_teacher_temp = 0.04
    c.dino.warmup_teacher_temp_epochs = 0
    c.dino.student_temp = 0.1
    c.dino.center_momentum = 0.9
    c.dino.freeze_last_layer = 1  # epochs during which the head's last layer gets no update

    c.mae = ml_collections.ConfigDict()  # used when method == "mae" (facebookresearch/mae)
    c.mae.mask_ratio = 0.75
    c.mae.norm_pix_loss = True
    c.mae.decoder_embed_dim = 512
    c.mae.decoder_depth = 8
    c.mae.decoder_num_heads = 16

    c.dinov2 = (
        ml_collections.ConfigDict()
    )  # used when method == "dinov2"; temperatures etc. in dino
    c.dinov2.centering = "centering"  # or "sinkhorn_knopp"
    c.dinov2.ibot_separate_head = False
    c.dinov2.dino_weight = 1.0
    c.dinov2.koleo_weight = 0.1
    c.dinov2.ibot_weight = 1.0
    c.dinov2.mask_probability = 0.5  # fraction of global crops that get a block mask
    c.dinov2.mask_ratio = (0.1, 0.5)  # stratified masking ratios

    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 5e-4  # peak lr per 256 images: peak = lr * batch_size / 256
    c.optim.lr_scaling = "linear256"  # or "sqrt1024": peak = lr * sqrt(batch_size / 1024) (DINOv2)
    c.optim.min_lr = 1e-6
    c.optim.warmup_epochs = 10
    c.optim.weight_decay = 0.04
    c.optim.weight_decay_end = 0.4
    c.optim.clip_grad = 3.0  # max gradient norm, per tensor (DINO) or per module (DINOv2); 0: off
    c.optim.layer_decay = 1.0  # layer-wise lr decay rate ** (depth + 1 - layer); 1 = off (DINOv2)
    c.optim.patch_embed_lr_mult = 1.0  # lr factor of the patch embedding (DINOv2: 0.2)
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8

    c.crops = ml_collections.ConfigDict()
    c.crops.global_size = 224
    c.crops.local_size = 96
    c.crops.n_local = 8
    c.crops.global_scale = (0.4, 1.0)
    c.crops.local_scale = (0.05, 0.4)
    c.crops.vflip_p = 0.5  # pathology addition (tissue has no up/down)
    c.crops.rot90 = True  # pathology addition
    c.crops.color_jitter_p = 0.8
    c.crops.grayscale_p = 0.2
    c.crops.blur_sigma = (0.1, 2.0)  # Gaussian blur std in px of the output crop (DINO's)
    c.crops.hed_p = 0.0  # HED stain jitter (pathology addition), off in plain DINO
    c.crops.hed_sigma = 0.05  # stain scale alpha ~ U(1 - sigma, 1 + sigma)
    c.crops.hed_bias = 0.005  # stain shift beta ~ U(-bias, bias), skimage rgb2hed units
    c.crops.photometric_on_device = False  # colour ops in the jitted step; host only crops
    c.crops.geometry_on_device = False  # DINO: crops cut in the jitted step (host sends patches)

    c.data = ml_collections.ConfigDict()
    c.data.source = "slides"  # "slides": online patching; "tfds": a tile store (docs/data.md)
    c.data.tfds_name = ""  # the store: "pathfm_tiles/<config>" or any TFDS image data set
    c.data.tfds_dir = ""  # its TFDS data_dir ("" = TFDS's default, ~/tensorflow_datasets)
    c.data.tfds_split = "train"
    c.data.tfds_image_key = "image"  # the image feature (uint8 RGB, JPEG or PNG)
    c.data.slides = ""  # directory, glob or CSV manifest (columns path[, mpp]); "" = synthetic
    c.data.synthetic_dir = ""  # "" = <workdir>/synthetic_slides
    c.data.synthetic_slides = 4
    c.data.synthetic_size = 4096  # level-0 px per side
    c.data.synthetic_mpp = 0.25
    c.data.patch_size = 256  # px read per sample, before multi-crop
    c.data.mpps = (0.25, 0.5, 1.0, 2.0)  # um/px: kaiko's 40x/20x/10x/5x mix; each slide
    # serves the ones its pyramid reaches without upscaling
    c.data.mpp_weights = ()  # empty = uniform
    c.data.mask_mpp = 8.0
    c.data.saturation_threshold = 20  # of 255 (eva); CLAM uses 8 with median blur and close
    c.data.use_otsu = False  # threshold at Otsu's level of the saturation instead (floored at 8)
    c.data.median_blur = 7  # kernel (CLAM's mthresh); 0 or 1 disables
    c.data.close_kernel = 5  # elliptic morphological close; 0 or 1 disables
    c.data.min_tissue_fraction = 0.35
    c.data.mask_cache_dir = ""  # bitmap masks cached by slide identity; "" = none (the slide
    # index's entries already keep every mask)
    c.data.max_bad_fraction = 0.5  # stop before training if more slides than this are unusable
    c.data.slide_weighting = "uniform"  # or "tissue_area": slides drawn by their tissue area
    c.data.patch_budget = 0  # > 0: train on this many distinct patch locations (kaiko ablation)
    c.data.on_bad_slide = "skip"  # or "error"
    # grain worker processes: "auto" = one per host core but one, capped by host memory
    # (pathfm.data.workers); 0 reads in the main process (the quick start, the tests)
    c.data.num_workers = ml_collections.FieldReference("auto", field_type=object)
    c.data.tile_cache_mb = 256  # decoded JPEG tiles kept per process (LRU, MiB); 0 = off
    # threads per reading process, each assembling one batch (<= prefetch_batches); "auto" =
    # the host's cores spread over the reading processes, 1-4 each, none in a worker with one
    # core (it reads in its own loop; pathfm.data.workers)
    c.data.read_threads = ml_collections.FieldReference("auto", field_type=object)
    c.data.prefetch_batches = 4  # batches read ahead per process (bounds host memory)
    c.data.dedupe = True  # a slide listed twice counts once (False: listing again weights it)
    c.data.root = ""  # folder relative slide paths are resolved against (and stored under)
    c.data.index_dir = ""  # prepared slide index (docs/data.md); "" = <workdir>/slide_index
    c.data.prepare_workers = 0  # processes preparing the index; 0 = one per local core
    c.data.mean = IMAGENET_MEAN
    c.data.std = IMAGENET_STD

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every_steps = 1000
    c.checkpoint.max_to_keep = 3

    c.monitor = ml_collections.ConfigDict()
    c.monitor.every_steps = 1000  # 0 disables RankMe/ODCorr
    c.monitor.num_patches = 1024  # fixed probe set, sampled with a seed apart from training
    c.monitor.batch_size = 256
    c.monitor.online_task = ""  # labelled set scored online: "synthetic", a data set name or ""
    c.monitor.online_root = ""  # its folder ("" with synthetic: the run's slides)
    c.monitor.online_protocols = ("knn",)  # and/or "linear_probe" (a short one)
    c.monitor.online_mpp = 0.5  # synthetic task: patch resolution
    c.monitor.online_per_class = 16  # synthetic task: patches per class and slide
    c.monitor.online_max_per_split = 2000  # data sets: images per split at most

    c.dashboard = ml_collections.ConfigDict()  # <workdir>/tensorboard/; see docs/dashboards.md
    c.dashboard.tensorboard = True  # event files of every logged scalar and crop grids
    c.dashboard.image_every_steps = 1000  # crop grids at the run's first step and every N; 0: first
    c.dashboard.image_samples = 8  # samples (grid rows) per crop grid; 0 writes no images
    c.dashboard.wandb = False  # the same scalars to Weights & Biases too (pip install .[wandb])
    c.dashboard.wandb_project = "pathfm"  # W&B project of the run (named after the workdir)
    c.dashboard.wandb_mode = "offline"  # <workdir>/wandb, `wandb sync` it; "online": `wandb login`
    c.dashboard.mlflow = False  # the same scalars to MLflow too (pip install .[mlflow])
    c.dashboard.mlflow_tracking_uri = ""  # "" = a local file store, file:<workdir>/mlruns
    c.dashboard.mlflow_experiment = "pathfm"  # MLflow experiment of the run (named after workdir)
    return c


def _as_tuple(value):
    """JSON lists back to the tuples the config holds (nested for e.g. mesh.rules)."""
    return tuple(_as_tuple(v) for v in value) if isinstance(value, list) else value


def _merge(target: ml_collections.ConfigDict, values: dict, prefix: str = "") -> None:
    for key, value in values.items():
        if key not in target:
            raise ConfigError(f"config.{prefix}{key}: not a key of this pathfm version")
        if isinstance(target[key], ml_collections.ConfigDict):
            _merge(target[key], value, f"{prefix}{key}.")
        elif isinstance(target[key], tuple):
            target[key] = _as_tuple(value)
        else:
            target[key] = value


def config_from_json(path) -> ml_collections.ConfigDict:
    """The config a run wrote to <workdir>/config.json, on top of `base_config()`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} does not exist: pass the workdir of a pathfm training run")
    config = base_config()
    _merge(config, json.loads(path.read_text()))
    return config


def quick_variant(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Shrinks an experiment to a few CPU steps on synthetic slides, keeping its method and
    recipe (every paper config's `:quick` argument)."""
    c.epochs, c.steps_per_epoch, c.batch_size, c.log_every_steps = 2, 2, 8, 1
    c.optim.warmup_epochs = min(c.optim.warmup_epochs, 1)
    c.dino.warmup_teacher_temp_epochs = min(c.dino.warmup_teacher_temp_epochs, 1)
    c.model.update(size="T", patch_size=8, embed_dim=32, depth=2, num_heads=2, img_size=32)
    c.dino.update(out_dim=256, hidden_dim=64, bottleneck_dim=32)
    c.mae.update(decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2)
    c.crops.update(global_size=32, local_size=16, n_local=min(c.crops.n_local, 2))
    c.data.update(slides="", patch_size=48, synthetic_size=2048, synthetic_slides=2)
    c.data.num_workers = 0
    c.monitor.update(every_steps=4, num_patches=16, batch_size=8)
    c.checkpoint.every_steps = 2
    return c


def tfds_variant(c: ml_collections.ConfigDict, store: str) -> ml_collections.ConfigDict:
    """Trains from the pre-extracted tile store `pathfm_tiles/<store>` instead of slides (a
    config's `tfds` argument; `python -m pathfm.build_tile_store --config <its file>` names the
    store after the file): set data.tfds_dir to the folder it was built in (docs/data.md)."""
    c.data.update(source="tfds", tfds_name=f"pathfm_tiles/{store}")
    return c


def apply_variant(
    c: ml_collections.ConfigDict,
    arg: str | None,
    allowed: tuple[str, ...] = ("quick",),
    store: str = "",
) -> ml_collections.ConfigDict:
    """The experiment as published (`arg` empty) or its variants `arg` names, comma-separated in
    the order given (e.g. `quick,tfds`): `quick` (a few CPU steps), `tfds` (the tile store
    `pathfm_tiles/<store>`) where the config allows it."""
    variants = {"quick": quick_variant, "tfds": lambda c: tfds_variant(c, store)}
    names = [a.strip() for a in (arg or "").split(",") if a.strip()]
    for name in names:
        if name not in allowed:
            choices = ", ".join(map(repr, allowed))
            several = " (comma-separated)" if len(allowed) > 1 else ""
            raise ValueError(f"unknown config argument {name!r}; use {choices}{several} or nothing")
        c = variants[name](c)
    return c


def kaiko_dino(size: str, patch_size: int, arg: str | None) -> ml_collections.ConfigDict:
    """kaiko.ai's DINO ViT-<size>/<patch> (Aben et al. 2024): DINO's reference recipe plus what
    the paper states: the 0.25/0.5/1/2 um/px mix, pathology flips and rotations, and the released
    models' normalisation mean = std = 0.5. Settings the paper does not state keep DINO's."""
    c = base_config()
    c.model.size, c.model.patch_size = size, patch_size
    c.data.update(mpps=(0.25, 0.5, 1.0, 2.0), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    c.crops.update(vflip_p=0.5, rot90=True)
    return apply_variant(c, arg)


def dinov2_defaults(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Switches a config to DINOv2 with the settings every DINOv2 recipe shares
    (facebookresearch/dinov2 ssl_default_config.yaml)."""
    c.method = "dinov2"
    c.model.update(layer_scale_init=1e-5, drop_path_uniform=True)
    c.dino.update(
        norm_last_layer=False,
        momentum_teacher=0.992,
        teacher_temp=0.07,
        warmup_teacher_temp=0.04,
        warmup_teacher_temp_epochs=30,
    )
    c.optim.update(lr_scaling="sqrt1024", patch_embed_lr_mult=0.2)
    c.crops.update(global_scale=(0.32, 1.0), local_scale=(0.05, 0.32))
    return c


def validate(config: ml_collections.ConfigDict, num_devices: int = 1) -> None:
    """ConfigError naming the first invalid value, before any work: each subsystem checks its
    own keys."""
    require(config.mode in ("pretrain",), "mode", f"{config.mode!r} is not one of: pretrain")
    check_training_config(config, num_devices)
    check_model_config(config.model)
    check_crops_config(config)
    check_data_config(config)
    check_method_config(config)
    check_monitor_config(config)
    if config.model.init_from:
        check_init_from_config(config)
