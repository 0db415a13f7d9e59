"""Tiny TFDS tile stores (ArrayRecord, no TensorFlow) for the tile-store training tests."""

from pathlib import Path

import cv2
import numpy as np


def jpeg(image: np.ndarray) -> bytes:
    """uint8 RGB [H, W, 3] -> JPEG bytes (what the store holds)."""
    return cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))[1].tobytes()


def png(image: np.ndarray) -> bytes:
    """uint8 [H, W, C] (RGB or grey) -> PNG bytes (lossless; arrays would need TensorFlow)."""
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.shape[-1] == 3 else image
    return cv2.imencode(".png", bgr)[1].tobytes()


def tile_features(tfds, channels: int = 3) -> dict:
    """The pathfm tile store's features (the build_tile_store contract)."""
    return {
        "image": tfds.features.Image(shape=(None, None, channels), encoding_format="jpeg"),
        "slide": tfds.features.Text(),
        "x": np.int64,
        "y": np.int64,
        "mpp": np.float32,
        "tissue_fraction": np.float32,
    }


def label_features(tfds) -> dict:
    """An image-and-label set like most TFDS image data sets."""
    return {
        "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
        "label": tfds.features.ClassLabel(num_classes=2),
    }


def write_store(
    data_dir: Path, name: str, config: str, features: dict, examples: list[dict]
) -> Path:
    """Prepares TFDS data set `name`/`config` 1.0.0 (split train, array_record) holding
    `examples` in order (keys 0..n-1) under `data_dir`; returns its version folder."""
    import tensorflow_datasets as tfds  # the tests' optional dependency, as in pathfm

    class_name = "".join(part.title() for part in name.split("_"))

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        yield from enumerate(examples)

    namespace = {
        "VERSION": tfds.core.Version("1.0.0"),
        "BUILDER_CONFIGS": [tfds.core.BuilderConfig(name=config)],
        "_info": _info,
        "_split_generators": _split_generators,
        "_generate_examples": _generate_examples,
    }
    builder_class = type(class_name, (tfds.core.GeneratorBasedBuilder,), namespace,
                         skip_registration=True)  # fmt: skip
    builder = builder_class(config=config, data_dir=str(data_dir), file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig())
    return Path(builder.data_dir)


def tile_examples(n: int, size: int, seed: int = 0) -> list[dict]:
    """`n` random size x size tiles with the store's provenance fields."""
    rng = np.random.default_rng(seed)
    return [
        {
            "image": jpeg(rng.integers(0, 256, (size, size, 3), np.uint8)),
            "slide": f"slide_{i % 3}.svs",
            "x": 1000 * i,
            "y": 7 * i,
            "mpp": 0.5,
            "tissue_fraction": 0.25 + i / (2 * n),
        }
        for i in range(n)
    ]
