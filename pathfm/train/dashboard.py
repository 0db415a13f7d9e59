"""TensorBoard event files of a run, written by process 0 beside metrics.jsonl.

Every logged scalar goes to `<workdir>/tensorboard/` under a grouped tag (`loss/total`,
`schedule/lr`, `monitor/rankme`, ...) and, every `dashboard.image_every_steps`, an image grid of the
batch's crops (one row per sample, one column per view). The event files are written here, in
TensorBoard's record format (length, masked CRC32C, Event proto), instead of through tensorboardX:
that one imports torch whenever it is installed, and the two messages needed are a few lines of
protobuf wire format. On resume, events past the restored step are dropped, as in metrics.jsonl.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from pathlib import Path
from typing import Any

import cv2
import ml_collections
import numpy as np

from pathfm.atomic import write_atomic

# ---- Tags ------------------------------------------------------------------------------------

GROUPS = {
    "schedule": ("lr", "wd", "teacher_temp", "momentum"),
    "throughput": ("images_per_s", "input_wait_frac"),
    "monitor": ("rankme", "odcorr"),
    "input": ("read_errors", "read_errors_total", "mean_mpp", "mean_tissue"),
}
NOT_SCALARS = ("batch_id",)  # an identifier of the batch's patches, not a quantity to plot
IMAGE_TAGS = {  # host batch key -> tag; MAE batches hold single crops ("images")
    "global_crops": "images/global_crops",
    "local_crops": "images/local_crops",
    "images": "images/crops",
    "patches": "images/patches",  # crops cut on the device: the patches they are cut from
}


def scalar_tag(name: str) -> str:
    """The TensorBoard tag of a metrics.jsonl name: loss terms, schedules, monitors, throughput."""
    if name == "loss":
        return "loss/total"
    if name.endswith("_loss"):
        return f"loss/{name[: -len('_loss')]}"
    if name.startswith("online_"):
        return f"monitor/{name}"
    for group, names in GROUPS.items():
        if name in names:
            return f"{group}/{name}"
    return f"train/{name}"


def is_number(value: Any) -> bool:
    """A scalar worth a plotted point (NaN and inf included: TensorBoard shows them)."""
    if hasattr(value, "item") and np.ndim(value) == 0:
        value = value.item()
    return isinstance(value, (int, float))


def tagged_scalars(record: dict[str, Any]) -> dict[str, float]:
    """{tag: value} of a metrics.jsonl record's plotted scalars: what every dashboard logs."""
    return {
        scalar_tag(name): float(value)
        for name, value in record.items()
        if name not in NOT_SCALARS and is_number(value)
    }


# ---- Event records ---------------------------------------------------------------------------


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
        table.append(crc)
    return table


_CRC32C = _crc32c_table()


def masked_crc32c(data: bytes) -> int:
    """TFRecord's checksum: CRC32C (Castagnoli), rotated and offset."""
    crc, table = 0xFFFFFFFF, _CRC32C
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (strings, bytes, messages)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _varint_field(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def _scalar_value(tag: str, value: float) -> bytes:
    """Summary.Value{tag, simple_value}."""
    return _field(1, tag.encode()) + _varint(2 << 3 | 5) + struct.pack("<f", value)


def _image_value(tag: str, image: np.ndarray) -> bytes:
    """Summary.Value{tag, image: Summary.Image{height, width, colorspace, PNG bytes}}."""
    ok, png = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"could not encode the {tag} grid as PNG")
    height, width = image.shape[:2]
    message = (
        _varint_field(1, height) + _varint_field(2, width) + _varint_field(3, 3)
        + _field(4, png.tobytes())
    )  # fmt: skip
    return _field(1, tag.encode()) + _field(4, message)


def _event(step: int, summary_values: list[bytes] = (), file_version: str = "") -> bytes:
    """Event{wall_time, step, file_version | summary{value...}}."""
    out = _varint(1 << 3 | 1) + struct.pack("<d", time.time()) + _varint_field(2, step)
    if file_version:
        out += _field(3, file_version.encode())
    if summary_values:
        out += _field(5, b"".join(_field(1, v) for v in summary_values))
    return out


def _record(data: bytes) -> bytes:
    header = struct.pack("<Q", len(data))
    return (
        header + struct.pack("<I", masked_crc32c(header))
        + data + struct.pack("<I", masked_crc32c(data))
    )  # fmt: skip


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if not byte & 0x80:
            return value, pos


def _event_step(event: bytes) -> int:
    """The step field of a serialised Event (0 when absent)."""
    pos = 0
    while pos < len(event):
        key, pos = _read_varint(event, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(event, pos)
            if number == 2:
                return value
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            length, pos = _read_varint(event, pos)
            pos += length
        else:
            raise ValueError(f"unsupported wire type {wire}")
    return 0


def truncate_events(path: Path, step: int) -> None:
    """Drops the records of an event file past `step` (and a torn last record), atomically."""
    data = path.read_bytes()
    kept, pos = [], 0
    while pos + 12 <= len(data):
        (length,) = struct.unpack_from("<Q", data, pos)
        end = pos + 12 + length + 4
        if end > len(data):
            break
        try:
            event_step = _event_step(data[pos + 12 : pos + 12 + length])
        except (IndexError, ValueError):
            break
        if event_step <= step:
            kept.append(data[pos:end])
        pos = end
    new = b"".join(kept)
    if new != data:
        write_atomic(path, new)  # the temporary name holds no "tfevents": readers skip it


# ---- Image grids -----------------------------------------------------------------------------


def crop_grid(views: np.ndarray, samples: int, pad: int = 2) -> np.ndarray:
    """uint8 [B, V, H, W, 3] (or [B, H, W, 3]) -> one RGB image: a row per sample (the first
    `samples`), a column per view, separated by `pad` white pixels."""
    views = views[:samples] if views.ndim == 5 else views[:samples, None]
    rows, cols, h, w, _ = views.shape
    grid = np.full((pad + rows * (h + pad), pad + cols * (w + pad), 3), 255, np.uint8)
    for r in range(rows):
        for c in range(cols):
            y, x = pad + r * (h + pad), pad + c * (w + pad)
            grid[y : y + h, x : x + w] = views[r, c]
    return grid


# ---- Writer ----------------------------------------------------------------------------------


class Dashboard:
    """Appends a run's scalars and crop grids to a new event file in `directory`; a no-op when
    disabled (processes other than 0, or `dashboard.tensorboard=False`)."""

    def __init__(
        self,
        directory: str | Path,
        resume_step: int = 0,
        enabled: bool = True,
        image_every_steps: int = 0,
        image_samples: int = 8,
    ):
        self.enabled = enabled
        self.first_step = resume_step + 1
        self.image_every_steps, self.image_samples = image_every_steps, image_samples
        self.file = None
        if not enabled:
            return
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if resume_step:
            for path in sorted(directory.glob("*tfevents*")):
                truncate_events(path, resume_step)
        # Readers take the files in name order: a microsecond timestamp puts a resumed run last.
        name = f"events.out.tfevents.{time.time():.6f}.{socket.gethostname()}.{os.getpid()}"
        self.path = directory / name
        self.file = self.path.open("wb")
        self.file.write(_record(_event(0, file_version="brain.Event:2")))  # kept by any truncation
        self.file.flush()

    @classmethod
    def from_config(
        cls, config: ml_collections.ConfigDict, workdir: str | Path, resume_step: int, enabled: bool
    ) -> Dashboard:
        d = config.dashboard
        return cls(
            Path(workdir) / "tensorboard",
            resume_step,
            enabled and d.tensorboard,
            d.image_every_steps,
            d.image_samples,
        )

    def wants_images(self, step: int) -> bool:
        """Crop grids at the run's first step (resumed or not) and every image_every_steps."""
        every = self.image_every_steps
        return bool(self.image_samples) and (
            step == self.first_step or (every > 0 and step % every == 0)
        )

    def log(self, step: int, record: dict[str, Any], host_batch: dict[str, np.ndarray]) -> None:
        """Writes the step's logged scalars and, at the image cadence, its crop grids."""
        if not self.enabled:
            return
        values = [_scalar_value(tag, value) for tag, value in tagged_scalars(record).items()]
        if self.wants_images(step):
            for key, tag in IMAGE_TAGS.items():
                crops = np.asarray(host_batch.get(key, ()))
                if crops.dtype == np.uint8 and crops.size and crops.shape[-1] == 3:
                    values.append(_image_value(tag, crop_grid(crops, self.image_samples)))
        if values:
            self.file.write(_record(_event(step, values)))
            self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
