"""Ready-to-run eva configs for a pathfm export: BACH, CRC, MHIST and PatchCamelyon.

kaiko.ai's eva (PyPI `kaiko-eva`, tested with 0.4.5) keeps its task configs in its repository,
not in its wheel. The files written here follow kaiko-ai/eva
`configs/vision/pathology/offline/classification/<task>.yaml`:

- trainer, callbacks, head (AdamW, lr 3e-4), batch size 256 and data keys as in `crc.yaml`
  (commit 0fa9bce) and `mhist.yaml` (2fea425), the newest revisions read, whose keys eva
  0.4.5's `Trainer` takes (`checkpoint_type`);
- each task's classes, splits, loss, metrics, patience, licence notes and whether it has a
  cosine schedule as in its own file: `crc.yaml` 0fa9bce, `mhist.yaml` 2fea425, and the older
  `bach.yaml` 0bebf62 and `patch_camelyon.yaml` 1e2d670 (PCam's batch of 4,096 and its
  `val/BinaryAccuracy` monitor there are 256 and `val/BinaryBalancedAccuracy` here, as for MHIST).

Two things differ from eva's files:

- the backbone is the export itself, through eva's `eva.vision.models.wrappers.TimmModel`
  (kaiko-ai/eva `src/eva/vision/models/wrappers/from_timm.py`) with every `timm_kwargs` of the
  export. eva's `ModelFromRegistry` (`MODEL_NAME=timm/<name>`) keeps only the kwargs its
  registry function names, so it drops `img_size`, `depth`, `reg_tokens`, ... (docs/eva.md).
  Exports with class-valued kwargs (SwiGLU) go through the folder's `hubconf.py` with eva's
  `eva.core.models.wrappers.TorchHubModel` (`src/eva/core/models/wrappers/from_torchhub.py`).
- the defaults of `IN_FEATURES`, `RESIZE_DIM`, `NORMALIZE_MEAN` and `NORMALIZE_STD` are the
  export's width, image size and normalisation, and `MODEL_NAME` (eva uses it only to name the
  output folders) defaults to the export folder's name.

Every other value keeps eva's environment variable: `DATA_ROOT` (the data set's folder, in the
layout eva's data set class reads), `EMBEDDINGS_ROOT`, `OUTPUT_ROOT`, `N_RUNS`, `MAX_STEPS`,
`BATCH_SIZE`, `PREDICT_BATCH_SIZE`, `N_DATA_WORKERS`, `LR_VALUE`, `PATIENCE`, ... The checkpoint
path also reads `CHECKPOINT_PATH` (hub exports: `EXPORT_DIR`), for a moved export folder.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from pathfm.atomic import write_atomic

EVA_VERSION = "0.4.5"  # the kaiko-eva release these configs are tested with (tests/test_eva.py)
FOLDER = "eva"  # the configs' folder inside the export folder


@dataclasses.dataclass(frozen=True)
class EvaTask:
    """What differs between eva's four patch-level classification configs.

    `splits` are the data set's splits in predict order (dataloader index -> split name); the
    second one monitors the probe. `classes` is the head's width (1 for binary tasks)."""

    name: str  # eva's config name and the output subfolder
    dataset: str  # eva's data set class
    splits: tuple[str, ...]
    classes: int
    patience: int  # eva's EarlyStopping patience, in validations
    download: str = ""  # the record a `download: true` fetches (empty: eva cannot download)
    license: tuple[str, ...] = ()  # eva's comment lines about the data set's licence
    cosine: bool = True  # CosineAnnealingLR over MAX_STEPS, as eva's file has it

    @property
    def binary(self) -> bool:
        return self.classes == 1


TASKS = {
    t.name: t
    for t in (
        EvaTask(
            "bach",
            "eva.vision.datasets.BACH",
            ("train", "val"),
            4,
            400,
            "https://zenodo.org/records/3632035",
            (
                "The BACH dataset is distributed under the following license",
                "Attribution-NonCommercial-NoDerivs 4.0 International license",
                "(see: https://creativecommons.org/licenses/by-nc-nd/4.0/legalcode)",
            ),
        ),
        EvaTask(
            "crc",
            "eva.vision.datasets.CRC",
            ("train", "val"),
            9,
            7,
            "https://zenodo.org/records/1214456",
            (
                "The CRC dataset is distributed under the following license:",
                '"CC BY 4.0 LEGAL CODE" (see: https://creativecommons.org/licenses/by/4.0/legalcode)',
            ),
            cosine=False,
        ),
        EvaTask("mhist", "eva.vision.datasets.MHIST", ("train", "test"), 1, 70),
        EvaTask(
            "patch_camelyon",
            "eva.vision.datasets.PatchCamelyon",
            ("train", "val", "test"),
            1,
            9,
            "https://zenodo.org/records/1494286",
            (
                "The PatchCamelyon dataset is distributed under the following license:",
                '"Creative Commons Zero v1.0 Universal"',
                "(see: https://choosealicense.com/licenses/cc0-1.0/)",
            ),
        ),
    )
}


def _yaml_value(value: Any) -> str:
    """A JSON value as YAML 1.1 reads it back: floats keep a '.' (`1e-05` would be a string)."""
    text = json.dumps(value)
    if isinstance(value, float) and "e" in text and "." not in text.split("e")[0]:
        mantissa, exponent = text.split("e")
        text = f"{mantissa}.0e{exponent}"
    return text


def _flow(mapping: dict[str, Any]) -> str:
    """A one-line YAML mapping (JSON values are YAML: null, true, 4.0, "token")."""
    return "{" + ", ".join(f"{k}: {_yaml_value(v)}" for k, v in mapping.items()) + "}"


def backbone_yaml(description: dict[str, Any], folder: Path) -> list[str]:
    """The `backbone:` lines of the embeddings writer (indented for their place).

    `description` is the export's JSON (`timm_name`, `timm_kwargs`, `timm_class_kwargs`, `files`)
    and `folder` the absolute export folder."""
    if description["timm_class_kwargs"]:  # a class cannot be written in YAML: hubconf.py has it
        args = {"source": "local", "name": description["timm_name"]}
        return [
            "class_path: eva.core.models.wrappers.TorchHubModel",
            "init_args:",
            "  model_name: pathfm_vit",
            f"  repo_or_dir: ${{oc.env:EXPORT_DIR, {folder}}}",
            "  pretrained: true",
            f"  model_kwargs: {_flow(args)}",
        ]
    files = description["files"]
    weights = folder / files.get("safetensors", files.get("pth", ""))
    kwargs = {"num_classes": 0, **description["timm_kwargs"]}  # 0: the CLS embedding, no head
    return [
        "class_path: eva.vision.models.wrappers.TimmModel",
        "init_args:",
        f"  model_name: {description['timm_name']}",
        f"  checkpoint_path: ${{oc.env:CHECKPOINT_PATH, {weights}}}",
        f"  model_kwargs: {_flow(kwargs)}",
    ]


def eva_config(task: EvaTask, description: dict[str, Any], folder: Path) -> str:
    """The YAML text of eva's offline config of `task` for the export described by
    `description` (its JSON) in `folder` (absolute)."""
    label, path = folder.name, folder / FOLDER / f"{task.name}.yaml"
    metric = "val/BinaryBalancedAccuracy" if task.binary else "val/MulticlassAccuracy"
    backbone = "\n".join(" " * 12 + line for line in backbone_yaml(description, folder))
    idx_map = "\n".join(f"            {i}: {s}" for i, s in enumerate(task.splits))
    size, mean, std = description["image_size"], description["mean"], description["std"]
    if task.binary:
        criterion, metrics = "torch.nn.BCEWithLogitsLoss", "eva.metrics.BinaryClassificationMetrics"
    else:
        criterion, metrics = (
            "torch.nn.CrossEntropyLoss",
            "eva.metrics.MulticlassClassificationMetrics",
        )
    lines = [
        f"# eva {EVA_VERSION} config: {task.name}, linear probe on the pathfm export "
        f"{description['timm_name']} in",
        f"# {folder}. Written by pathfm (pathfm/interop/eva_configs.py) after kaiko-ai/eva",
        f"# configs/vision/pathology/offline/classification/{task.name}.yaml. See docs/eva.md:",
        f"#   DATA_ROOT=/data/{task.name} eva predict_fit --config {path}",
        "---",
        "trainer:",
        "  class_path: eva.Trainer",
        "  init_args:",
        "    n_runs: &N_RUNS ${oc.env:N_RUNS, 5}",
        "    default_root_dir: &OUTPUT_ROOT ${oc.env:OUTPUT_ROOT, logs/${oc.env:MODEL_NAME, "
        f"{label}}}/offline/{task.name}}}",
        "    max_steps: &MAX_STEPS ${oc.env:MAX_STEPS, 12500}",
        "    checkpoint_type: ${oc.env:CHECKPOINT_TYPE, best}",
        "    callbacks:",
        "      - class_path: eva.callbacks.ConfigurationLogger",
        "      - class_path: lightning.pytorch.callbacks.TQDMProgressBar",
        "        init_args:",
        "          refresh_rate: ${oc.env:TQDM_REFRESH_RATE, 1}",
        "      - class_path: lightning.pytorch.callbacks.LearningRateMonitor",
        "        init_args:",
        "          logging_interval: epoch",
        "      - class_path: lightning.pytorch.callbacks.ModelCheckpoint",
        "        init_args:",
        "          filename: best",
        "          save_last: ${oc.env:SAVE_LAST, false}",
        "          save_top_k: 1",
        f"          monitor: &MONITOR_METRIC ${{oc.env:MONITOR_METRIC, {metric}}}",
        "          mode: &MONITOR_METRIC_MODE ${oc.env:MONITOR_METRIC_MODE, max}",
        "      - class_path: lightning.pytorch.callbacks.EarlyStopping",
        "        init_args:",
        "          min_delta: 0",
        f"          patience: ${{oc.env:PATIENCE, {task.patience}}}",
        "          monitor: *MONITOR_METRIC",
        "          mode: *MONITOR_METRIC_MODE",
        "      - class_path: eva.callbacks.ClassificationEmbeddingsWriter",
        "        init_args:",
        "          output_dir: &DATASET_EMBEDDINGS_ROOT "
        "${oc.env:EMBEDDINGS_ROOT, ./data/embeddings}/"
        f"${{oc.env:MODEL_NAME, {label}}}/{task.name}",
        "          dataloader_idx_map:",
        idx_map,
        "          backbone:",
        backbone,
        "          overwrite: false",
        "    logger:",
        "      - class_path: lightning.pytorch.loggers.TensorBoardLogger",
        "        init_args:",
        "          save_dir: *OUTPUT_ROOT",
        '          name: ""',
        "model:",
        "  class_path: eva.HeadModule",
        "  init_args:",
        "    head:",
        "      class_path: torch.nn.Linear",
        "      init_args:",
        f"        in_features: ${{oc.env:IN_FEATURES, {description['embed_dim']}}}",
        f"        out_features: {'1' if task.binary else f'&NUM_CLASSES {task.classes}'}",
        f"    criterion: {criterion}",
        "    optimizer:",
        "      class_path: torch.optim.AdamW",
        "      init_args:",
        "        lr: ${oc.env:LR_VALUE, 0.0003}",
    ]
    if task.cosine:
        lines += [
            "    lr_scheduler:",
            "      class_path: torch.optim.lr_scheduler.CosineAnnealingLR",
            "      init_args:",
            "        T_max: *MAX_STEPS",
            "        eta_min: 0.0",
        ]
    lines += [
        "    metrics:",
        "      common:",
        "        - class_path: eva.metrics.AverageLoss",
        f"        - class_path: {metrics}",
    ]
    if not task.binary:
        lines += ["          init_args:", "            num_classes: *NUM_CLASSES"]
    lines += ["data:", "  class_path: eva.DataModule", "  init_args:", "    datasets:"]
    stages = ("train", "val", "test")[: len(task.splits)]
    for i, (stage, split) in enumerate(zip(stages, task.splits, strict=True)):
        lines += [
            f"      {stage}:",
            "        class_path: eva.datasets.EmbeddingsClassificationDataset",
        ]
        if i == 0:
            lines += [
                "        init_args: &DATASET_ARGS",
                "          root: *DATASET_EMBEDDINGS_ROOT",
                "          manifest_file: manifest.csv",
                f"          split: {split}",
            ]
            if task.binary:
                lines += [
                    "          target_transforms:",
                    "            class_path: torchvision.transforms.v2.ToDtype",
                    "            init_args:",
                    "              dtype: torch.float32",
                ]
        else:
            lines += [
                "        init_args:",
                "          <<: *DATASET_ARGS",
                f"          split: {split}",
            ]
    lines += ["      predict:"]
    for i, split in enumerate(task.splits):
        lines += [f"        - class_path: {task.dataset}"]
        if i:
            lines += [
                "          init_args:",
                "            <<: *PREDICT_DATASET_ARGS",
                f"            split: {split}",
            ]
            continue
        lines += [
            "          init_args: &PREDICT_DATASET_ARGS",
            f"            root: ${{oc.env:DATA_ROOT, ./data/{task.name}}}",
            f"            split: {split}",
        ]
        if task.download:
            lines += [
                "            download: ${oc.env:DOWNLOAD_DATA, false}",
                f"            # Set `download: true` to download the dataset from {task.download}",
                *(f"            # {line}" for line in task.license),
            ]
        lines += [
            "            transforms:",
            "              class_path: eva.vision.data.transforms.common.ResizeAndCrop",
            "              init_args:",
            f"                size: ${{oc.env:RESIZE_DIM, {size}}}",
            f"                mean: ${{oc.env:NORMALIZE_MEAN, {json.dumps(list(mean))}}}",
            f"                std: ${{oc.env:NORMALIZE_STD, {json.dumps(list(std))}}}",
        ]
    lines += [
        "    dataloaders:",
        "      train:",
        "        batch_size: &BATCH_SIZE ${oc.env:BATCH_SIZE, 256}",
        "        num_workers: &N_DATA_WORKERS ${oc.env:N_DATA_WORKERS, 4}",
        "        shuffle: true",
    ]
    for stage in stages[1:]:
        lines += [
            f"      {stage}:",
            "        batch_size: *BATCH_SIZE",
            "        num_workers: *N_DATA_WORKERS",
        ]
    lines += [
        "      predict:",
        "        batch_size: &PREDICT_BATCH_SIZE ${oc.env:PREDICT_BATCH_SIZE, 64}",
        "        num_workers: *N_DATA_WORKERS",
    ]
    return "\n".join(lines) + "\n"


def write_eva_configs(description: dict[str, Any], output: str | Path) -> list[Path]:
    """Writes `<output>/eva/<task>.yaml` for every task of `TASKS`; returns their paths.

    `description` is the export's JSON (as `pathfm.interop.timm_export.export_backbone` returns
    it: `timm_name`, `timm_kwargs`, `timm_class_kwargs`, `files`, `embed_dim`, `image_size`,
    `mean`, `std`); `output` is the export folder, written into the files as an absolute path."""
    folder = Path(output).resolve()
    (folder / FOLDER).mkdir(parents=True, exist_ok=True)
    paths = []
    for task in TASKS.values():
        path = folder / FOLDER / f"{task.name}.yaml"
        write_atomic(path, eva_config(task, description, folder))
        paths.append(path)
    return paths
