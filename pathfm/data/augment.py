"""DINO multi-crop augmentation on the host (numpy + cv2), returning uint8 crops.

Mirrors ``DataAugmentationDINO`` of facebookresearch/dino (main_dino.py) with the torchvision
transforms it uses. Deliberate differences (all numerical, none in the random structure):

* Resize: torchvision/PIL bicubic (a=-0.5, antialiased) is replaced by cv2.INTER_AREA when an
  axis shrinks by >= 1.5x (antialiased box filter), cv2.INTER_LINEAR when both shrink by less
  and cv2.INTER_CUBIC (a=-0.75, no antialias) when an axis is enlarged; crops that shrink one axis
  by >= 1.5x and enlarge the other are resized one axis at a time. Over DINO's crops of H&E
  patches this is 1.13 grey levels from PIL (all-INTER_AREA shrinking: 1.17) at half the time:
  OpenCV's INTER_AREA for factors below 2 is a slow generic path (117 us for 120 -> 96 px).
* ColorJitter: the four ops run on one float32 buffer, clipped to [0, 255] after every op as
  torchvision does, but rounded to uint8 once at the end (torchvision and PIL quantise, and
  truncate, after each op). Contrast blends with the exact float mean of the grayscale image and
  saturation with the float grayscale (PIL rounds the mean to an integer and uses its 8-bit
  grayscale; torchvision truncates the grayscale to uint8 first). Hue is shifted in float32 HSV
  (PIL shifts an 8-bit hue, i.e. in steps of 1/256 turn, and quantises S and V).
* GaussianBlur: cv2.GaussianBlur(sigma, ksize=2*ceil(3*sigma)+1, BORDER_REFLECT) instead of PIL's
  box-blur approximation with ``radius=sigma``; close but not bit-identical.
* Randomness comes from one ``np.random.Generator`` (torch, and Python ``random`` for blur and
  solarize, in DINO); the draw order per crop is documented in ``DinoMultiCrop._augment``.
  ColorJitter draws 8 uniforms at once: the argsort of the first 4 is its random op order (a
  uniform permutation, like ``torch.randperm(4)``), the other 4 its factors. Crop offsets use
  ``int(u * n)`` for ``randint(0, n)``. Probabilities compare ``u < p`` (DINO's blur uses <=).
* Speed: crops are written in place into the output arrays and reusable per-thread float32
  work buffers (cv2 ``dst=``), so a call allocates almost nothing; large per-op temporaries made
  glibc return and re-fault heap pages on every call, which cost more than the arithmetic.
* Pathology additions: optional vertical flip and 90-degree rotation right after the
  horizontal flip, and HED stain jitter (Tellez et al. 2018) before colour jitter; ``vflip_p=0``,
  ``rot90=False`` and ``hed_p=0`` (defaults) give plain DINO semantics and draws.
  HED uses skimage's ``rgb2hed`` units (stains = OD / ln(1e6) on skimage's stain matrix), but
  keeps negative stain amounts (skimage clips them to 0), so the round trip is lossless.
* ``photometric_on_host=False`` keeps only the geometric ops (crop, resize, flips, rot90) and
  draws nothing for the others: they then run on the accelerator (``pathfm.data.device_augment``).
  ``geometry_on_host=False`` as well only draws the crops (same draws): the accelerator cuts them
  from the patch with PIL's antialiased bicubic, as DINO does (``pathfm.data.device_crops``).
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Callable
from typing import Any

import cv2
import ml_collections
import numpy as np

from pathfm.errors import ConfigError, DataError

_GRAY = (0.299, 0.587, 0.114)  # ITU-R 601-2 luma, as PIL and torchvision
# PIL convert('L'): (19595 R + 38470 G + 7471 B + 2**15) >> 16, as a 3x4 colour matrix. In units
# of 2**-16 every partial sum is an integer below 2**24, so float32 evaluation is exact and the
# float->uint8 truncation gives PIL's floor: bit-exact with PIL.
_PIL_LUMA = np.tile(np.array([19595, 38470, 7471, 32768], np.float64) / 65536, (3, 1))
# skimage.color rgb_from_hed (rows: haematoxylin, eosin, DAB optical densities; Ruifrok & Johnston
# 2001) and hed_from_rgb, its inverse. Stains use skimage's scale: (OD = -ln rgb) / ln(1e6).
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
HED_FROM_RGB = np.array(
    [
        [1.87798274, -1.00767869, -0.55611582],
        [-0.06590806, 1.13473037, -0.1355218],
        [-0.60190736, -0.48041419, 1.57358807],
    ]
)
AREA_MIN_SHRINK = 1.5  # shrink factors from which `resize` uses INTER_AREA (see above)
GEOMETRY_DRAWS = 6  # uniforms a view's geometry takes at least: box 2 + place 2, flips 2
VIEWS = ("global1", "global2", "local")  # the blur and solarize probabilities' order
HED_LOG_ADJUST = -math.log(1e-6)  # skimage floors rgb at 1e-6 and scales OD by 1 / ln(1e6)


@dataclasses.dataclass(frozen=True)
class PhotometricConfig:
    """Colour settings per view (host or device); defaults are DINO's (main_dino.py
    ``DataAugmentationDINO``)."""

    color_jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    grayscale_p: float = 0.2
    blur_p: tuple[float, float, float] = (1.0, 0.1, 0.5)  # global 1, global 2, each local
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: tuple[float, float] = (0.0, 0.2)  # global 1, global 2 (never on locals)
    hed_p: float = 0.0
    hed_sigma: float = 0.05
    hed_bias: float = 0.05

    def __post_init__(self) -> None:
        """Check ranges and probabilities."""
        if len(self.blur_p) != 3 or len(self.solarize_p) != 2:
            raise ConfigError("photometric: blur_p needs 3 values and solarize_p needs 2")
        probs = (self.color_jitter_p, self.grayscale_p, self.hed_p, *self.blur_p)
        if not all(0.0 <= p <= 1.0 for p in (*probs, *self.solarize_p)):
            raise ConfigError("photometric: every probability must lie in [0, 1]")
        if min(self.brightness, self.contrast, self.saturation) < 0 or not 0 <= self.hue <= 0.5:
            raise ConfigError("photometric: jitter strengths must be >= 0 and hue in [0, 0.5]")
        if not 0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            raise ConfigError("photometric: blur_sigma must satisfy 0 < low <= high")
        if not (0 <= self.hed_sigma <= 1 and self.hed_bias >= 0):
            raise ConfigError("photometric: hed_sigma must lie in [0, 1] and hed_bias be >= 0")

    @classmethod
    def from_multicrop(cls, cfg: MultiCropConfig) -> PhotometricConfig:
        """The colour settings a ``MultiCropConfig`` holds."""
        return cfg.photometric

    def probabilities(self, view: str) -> tuple[float, float, float, float, float]:
        """(hed, colour jitter, grayscale, blur, solarize) probabilities of ``view``."""
        if view not in VIEWS:
            raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
        i = VIEWS.index(view)
        solarize = self.solarize_p[i] if i < 2 else 0.0
        return self.hed_p, self.color_jitter_p, self.grayscale_p, self.blur_p[i], solarize


PHOTOMETRIC_FIELDS = frozenset(f.name for f in dataclasses.fields(PhotometricConfig))


@dataclasses.dataclass(frozen=True, init=False)
class MultiCropConfig:
    """Multi-crop settings; defaults are DINO's (main_dino.py) for ViT pre-training. The colour
    settings live in `photometric` (the same object the device augmentation takes); they can be
    given and read by name as well: ``MultiCropConfig(hue=0.05).hue``."""

    global_size: int = 224
    local_size: int = 96
    n_local: int = 8
    global_scale: tuple[float, float] = (0.4, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.4)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip_p: float = 0.5
    vflip_p: float = 0.0  # pathology addition, applied with the horizontal flip
    rot90: bool = False  # pathology addition: rotate by k * 90 degrees, k uniform in {0, 1, 2, 3}
    photometric: PhotometricConfig = PhotometricConfig()
    photometric_on_host: bool = True  # False: geometric ops only (photometric on the device)
    geometry_on_host: bool = True  # False: draw the crops only (cut on the device, too)

    def __init__(self, photometric: PhotometricConfig | None = None, **settings: Any):
        colour = {k: settings.pop(k) for k in list(settings) if k in PHOTOMETRIC_FIELDS}
        photometric = dataclasses.replace(photometric or PhotometricConfig(), **colour)
        object.__setattr__(self, "photometric", photometric)
        for field in dataclasses.fields(self):
            if field.name != "photometric":
                object.__setattr__(self, field.name, settings.pop(field.name, field.default))
        if settings:
            raise ConfigError(f"multi-crop: unknown settings {sorted(settings)}")
        self.__post_init__()

    def __getattr__(self, name: str) -> Any:
        """The colour settings by name (``cfg.hue`` is ``cfg.photometric.hue``)."""
        if name in PHOTOMETRIC_FIELDS:
            return getattr(self.photometric, name)
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def __post_init__(self) -> None:
        """Check sizes, ranges and probabilities (the colour ones: PhotometricConfig)."""
        if self.global_size < 1 or self.local_size < 1 or self.n_local < 0:
            raise ConfigError("multi-crop: global_size/local_size must be >= 1, n_local >= 0")
        for name in ("global_scale", "local_scale", "ratio"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ConfigError(f"multi-crop: {name} must satisfy 0 < low <= high, got {lo, hi}")
        if not all(0.0 <= p <= 1.0 for p in (self.hflip_p, self.vflip_p)):
            raise ConfigError("multi-crop: every probability must lie in [0, 1]")
        if self.photometric_on_host and not self.geometry_on_host:
            raise ConfigError(
                "multi-crop: crops cut on the device need the colour ops there too "
                "(photometric_on_host=False), since the colour ops follow the crop"
            )


class UniformsAhead:
    """The next uniforms of a generator, `n` of them drawn in one call: exactly the values, and
    the generator state, of as many ``rng.random()`` calls, as long as the caller draws at least
    `n` (past them it draws one at a time). A block costs about one scalar call (0.6 us), so a
    sample's ~70 crop draws cost a third as much. ``random()`` mirrors ``Generator.random()``."""

    __slots__ = ("_ahead", "_rng")

    def __init__(self, rng: np.random.Generator, n: int):
        self._rng = rng
        self._ahead = rng.random(n).tolist()[::-1]  # popped from the end: the stream's order

    def random(self) -> float:
        return self._ahead.pop() if self._ahead else self._rng.random()


def sample_crop_box(
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    rng: np.random.Generator | UniformsAhead,
) -> tuple[int, int, int, int]:
    """Return (top, left, h, w) exactly as torchvision ``RandomResizedCrop.get_params``."""
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target_area = area * (scale[0] + (scale[1] - scale[0]) * rng.random())
        aspect = math.exp(log_lo + (log_hi - log_lo) * rng.random())
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.random() * (height - h + 1))  # randint(0, height - h + 1)
            left = int(rng.random() * (width - w + 1))
            return top, left, h, w
    in_ratio = width / height  # fallback: central crop, aspect clamped to the ratio range
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        h, w = height, round(height * max(ratio))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _into(result: np.ndarray, out: np.ndarray | None) -> np.ndarray:
    """Return ``out`` holding ``result`` (cv2 writes into a matching ``dst``; copy otherwise)."""
    if out is None or result is out:
        return result
    out[...] = result
    return out


def resize(image: np.ndarray, size: int, out: np.ndarray | None = None) -> np.ndarray:
    """Resize uint8 [h, w, C] to [size, size, C]: INTER_AREA per axis shrunk >= 1.5x,
    INTER_LINEAR when both shrink less, INTER_CUBIC when an axis is enlarged."""
    h, w = image.shape[:2]
    if h == size and w == size:
        return image.copy() if out is None else _into(image, out)
    area = max(h, w) >= AREA_MIN_SHRINK * size
    if h < size or w < size:  # some axis is enlarged
        if area:  # ... and the other shrunk >= 1.5x: shrink it first with INTER_AREA
            dsize = (w, size) if h > size else (size, h)
            image = cv2.resize(image, dsize, interpolation=cv2.INTER_AREA)
        interp = cv2.INTER_CUBIC
    else:
        interp = cv2.INTER_AREA if area else cv2.INTER_LINEAR
    return _into(cv2.resize(image, (size, size), dst=out, interpolation=interp), out)


def random_resized_crop(
    image: np.ndarray,
    size: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    rng: np.random.Generator,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """RandomResizedCrop of uint8 [H, W, 3] to uint8 [size, size, 3]."""
    top, left, h, w = sample_crop_box(image.shape[0], image.shape[1], scale, ratio, rng)
    return resize(image[top : top + h, left : left + w], size, out)


# The private ops work in place on a float32 [H, W, 3] buffer with values in [0, 255] (cv2 ops
# use dst=src). A blend with factor <= 1 stays inside [0, 255], so its clip is skipped. Colour
# matrices are built from Python lists: numpy helpers cost more than the op on a 96 px crop.
def _brightness(f: np.ndarray, factor: float) -> np.ndarray:
    """blend(img, 0, factor)."""
    f *= np.float32(factor)
    return np.clip(f, 0.0, 255.0, out=f) if factor > 1 else f


def _contrast(f: np.ndarray, factor: float) -> np.ndarray:
    """blend(img, mean(grayscale(img)), factor), one affine colour transform."""
    means = cv2.mean(f)
    off = (1.0 - factor) * (_GRAY[0] * means[0] + _GRAY[1] * means[1] + _GRAY[2] * means[2])
    mat = [[factor, 0.0, 0.0, off], [0.0, factor, 0.0, off], [0.0, 0.0, factor, off]]
    cv2.transform(f, np.array(mat), dst=f)
    return np.clip(f, 0.0, 255.0, out=f) if factor > 1 else f


def _saturation(f: np.ndarray, factor: float) -> np.ndarray:
    """blend(img, grayscale(img), factor), one 3x3 colour matrix."""
    r, g, b = ((1.0 - factor) * w for w in _GRAY)
    mat = [[r + factor, g, b], [r, g + factor, b], [r, g, b + factor]]
    cv2.transform(f, np.array(mat), dst=f)
    return np.clip(f, 0.0, 255.0, out=f) if factor > 1 else f


def _hue(f: np.ndarray, factor: float) -> np.ndarray:
    """Rotate the HSV hue by ``factor`` turns (cv2's float HSV has H in degrees)."""
    cv2.cvtColor(f, cv2.COLOR_RGB2HSV, dst=f)
    # A non-negative shift keeps H in [0, 720): cv2's HSV->RGB wraps H >= 360 but not H < 0.
    cv2.add(f, ((360.0 * factor) % 360.0, 0.0, 0.0, 0.0), dst=f)  # a cv2 Scalar: H channel only
    return cv2.cvtColor(f, cv2.COLOR_HSV2RGB, dst=f)


def _to_uint8(f: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Round float32 [H, W, 3] in [0, 255] to uint8 (cv2 rounds to nearest and saturates)."""
    return _into(cv2.convertScaleAbs(f, dst=out), out)


def _apply(
    op: Callable[[np.ndarray, float], np.ndarray], image: np.ndarray, factor: float
) -> np.ndarray:
    """Run a private op on a float32 copy; uint8 in -> uint8 out, float in -> float32 out."""
    f = op(np.array(image, dtype=np.float32), factor)
    return _to_uint8(f) if image.dtype == np.uint8 else f


def adjust_brightness(image: np.ndarray, factor: float) -> np.ndarray:
    """Brightness as torchvision: clip(factor * img) on [H, W, 3]."""
    return _apply(_brightness, image, factor)


def adjust_contrast(image: np.ndarray, factor: float) -> np.ndarray:
    """Contrast as torchvision: blend with the scalar mean of the grayscale image."""
    return _apply(_contrast, image, factor)


def adjust_saturation(image: np.ndarray, factor: float) -> np.ndarray:
    """Saturation as torchvision: blend with the per-pixel grayscale image."""
    return _apply(_saturation, image, factor)


def adjust_hue(image: np.ndarray, factor: float) -> np.ndarray:
    """Hue as torchvision: rotate HSV hue by ``factor`` in [-0.5, 0.5] of a full turn."""
    if not -0.5 <= factor <= 0.5:
        raise ValueError(f"hue factor must lie in [-0.5, 0.5], got {factor}")
    return _apply(_hue, image, factor)


def _jitter(
    f: np.ndarray,
    brightness: float,
    contrast: float,
    saturation: float,
    hue: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """ColorJitter in place on float32 [H, W, 3]: ops in a random order, each with its factor."""
    # One draw of 8 uniforms: the first 4 give a uniform random order (as torch.randperm(4)), the
    # last 4 the factors b, c, s ~ U(max(0, 1 - x), 1 + x) and h ~ U(-hue, hue). A zero strength
    # switches its op off (torchvision: range None), so all-zero strengths are an exact identity.
    u = rng.random(8).tolist()
    strengths = (brightness, contrast, saturation)
    ops = []
    for op, x, v in zip((_brightness, _contrast, _saturation), strengths, u[4:7], strict=True):
        lo = max(0.0, 1.0 - x)
        ops.append((op, lo + (1.0 + x - lo) * v if x > 0 else None))
    ops.append((_hue, hue * (2.0 * u[7] - 1.0) if hue > 0 else None))
    for idx in sorted(range(4), key=u.__getitem__):
        op, factor = ops[idx]
        if factor is not None:
            f = op(f, factor)
    return f


def color_jitter(
    image: np.ndarray,
    brightness: float,
    contrast: float,
    saturation: float,
    hue: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """torchvision ColorJitter on uint8 [H, W, 3] -> uint8 [H, W, 3]."""
    f = np.array(image, dtype=np.float32)
    return _to_uint8(_jitter(f, brightness, contrast, saturation, hue, rng))


def rgb_to_hed(image: np.ndarray) -> np.ndarray:
    """skimage ``rgb2hed`` of uint8 (or float in [0, 1]) [..., 3] -> float64 stains, unclipped."""
    rgb = image / 255.0 if image.dtype == np.uint8 else np.asarray(image, np.float64)
    return -np.log(np.maximum(rgb, 1e-6)) / HED_LOG_ADJUST @ HED_FROM_RGB


def hed_to_rgb(hed: np.ndarray) -> np.ndarray:
    """skimage ``hed2rgb``: stains [..., 3] -> float64 RGB in [0, 1]."""
    return np.clip(np.exp(-(hed * HED_LOG_ADJUST) @ RGB_FROM_HED), 0.0, 1.0)


def hed_matrix(alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """3x4 affine map of ln(rgb) for stains s -> s * alpha + beta (row-vector pixels, as cv2)."""
    # OD' = OD @ A + c with A = H diag(alpha) R and c = L beta @ R; ln(rgb) = -OD.
    a = HED_FROM_RGB @ (np.asarray(alpha, np.float64)[:, None] * RGB_FROM_HED)
    c = HED_LOG_ADJUST * np.asarray(beta, np.float64) @ RGB_FROM_HED
    return np.concatenate([a.T, -c[:, None]], axis=1)


def _hed(f: np.ndarray, alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """HED stain scale/shift in place on float32 [H, W, 3] in [0, 255] (floor 1e-6 as skimage)."""
    mat = hed_matrix(alpha, beta)
    mat[:, 3] += math.log(255.0) * (1.0 - mat[:, :3].sum(axis=1))  # ln(v / 255) -> ln v
    np.maximum(f, np.float32(255e-6), out=f)
    cv2.log(f, dst=f)
    cv2.transform(f, mat, dst=f)
    cv2.exp(f, dst=f)
    return np.minimum(f, 255.0, out=f)


def adjust_hed(image: np.ndarray, alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """Stains s -> s * alpha + beta (each [3]: H, E, DAB) on [H, W, 3]; uint8 -> uint8 else f32."""
    f = _hed(np.array(image, dtype=np.float32), alpha, beta)
    return _to_uint8(f) if image.dtype == np.uint8 else f


def _hed_factors(sigma: float, bias: float, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """(alpha, beta): one draw of 6 uniforms, alpha ~ U(1 - sigma, 1 + sigma), beta ~ U(-b, b)."""
    u = rng.random(6)
    return 1.0 - sigma + 2.0 * sigma * u[:3], bias * (2.0 * u[3:] - 1.0)


def hed_jitter(
    image: np.ndarray, sigma: float, bias: float, rng: np.random.Generator
) -> np.ndarray:
    """HED stain jitter (Tellez et al. 2018) of uint8 [H, W, 3] -> uint8 [H, W, 3]."""
    return adjust_hed(image, *_hed_factors(sigma, bias, rng))


def _grayscale_inplace(x: np.ndarray, buf: np.ndarray) -> np.ndarray:
    """PIL luma of uint8 [H, W, 3] written into all 3 channels of ``x``; buf: float32 scratch."""
    np.copyto(buf, x)
    cv2.transform(buf, _PIL_LUMA, dst=buf)
    np.copyto(x, buf, casting="unsafe")  # truncation = PIL's >> 16
    return x


def to_grayscale(image: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [H, W, 3] luma in every channel, bit-exact with PIL."""
    return _grayscale_inplace(image.copy(), np.empty(image.shape, np.float32))


def gaussian_blur(image: np.ndarray, sigma: float, out: np.ndarray | None = None) -> np.ndarray:
    """Gaussian blur of uint8 [H, W, 3] with std ``sigma`` px (ksize 2*ceil(3*sigma)+1)."""
    k = 2 * math.ceil(3 * sigma) + 1
    res = cv2.GaussianBlur(
        image, (k, k), sigma, dst=out, sigmaY=sigma, borderType=cv2.BORDER_REFLECT
    )
    return _into(res, out)


def solarize(image: np.ndarray, threshold: int = 128, out: np.ndarray | None = None) -> np.ndarray:
    """PIL ImageOps.solarize: pixels >= threshold become 255 - v."""
    lut = np.arange(256, dtype=np.uint8)
    lut[threshold:] = 255 - lut[threshold:]
    return _into(cv2.LUT(image, lut, dst=out), out)


def transpose_flips(hflip: Any, vflip: Any, k: Any) -> tuple[Any, Any, Any]:
    """(transpose, column flip, row flip) applied in that order equal the horizontal and vertical
    flips then ``k`` counter-clockwise quarter turns (``np.rot90(flipped, k)``) of a square image.
    With R = rot90 = flip rows after a transpose T: R F = flip rows, swap(F), T; R^2 = flip both;
    R^3 F = flip columns, swap(F), T, where swap(F) exchanges the row and column flips of F
    (T F = swap(F) T). Plain boolean/integer arithmetic: numpy scalars and JAX arrays alike."""
    transpose = k % 2 == 1
    h = (vflip & transpose) | (hflip & ~transpose)
    v = (hflip & transpose) | (vflip & ~transpose)
    return transpose, h ^ ((k == 2) | (k == 3)), v ^ ((k == 1) | (k == 2))


def orient_inplace(image: np.ndarray, hflip: bool, vflip: bool, k: int) -> None:
    """``image[...] = np.rot90(flipped, k)`` (counter-clockwise quarter turns) of the flipped
    square uint8 [S, S, C] ``image``, as one OpenCV transpose and/or flip (`transpose_flips`)."""
    flips = transpose_flips(np.bool_(hflip), np.bool_(vflip), np.int64(k))
    transpose, h, v = (bool(x) for x in flips)
    source = cv2.transpose(image) if transpose else image
    if h or v:  # column flip is cv2 code 1, row flip code 0
        cv2.flip(source, -1 if h and v else (1 if h else 0), dst=image)
    elif transpose:
        image[...] = source


class DinoMultiCrop:
    """DINO's ``DataAugmentationDINO`` on one uint8 [H, W, 3] patch; thread-safe, picklable."""

    def __init__(self, config: MultiCropConfig):
        """Store the (validated) config; float32 work buffers are made per thread on use."""
        self.config = config
        self._local = threading.local()

    def __getstate__(self) -> dict:
        """Pickle the config only (workers rebuild their buffers)."""
        return {"config": self.config}

    def __setstate__(self, state: dict) -> None:
        """Restore from the config."""
        self.__init__(state["config"])

    def _buffer(self, size: int) -> np.ndarray:
        """This thread's float32 [size, size, 3] scratch buffer."""
        bufs = self._local.__dict__.setdefault("bufs", {})
        if size not in bufs:
            bufs[size] = np.empty((size, size, 3), np.float32)
        return bufs[size]

    def _geometry_uniforms(self, rng: np.random.Generator, views: int) -> UniformsAhead:
        """`rng` with the fewest uniforms `views` views' geometry takes drawn in one block."""
        return UniformsAhead(rng, views * (GEOMETRY_DRAWS + self.config.rot90))

    def _draw_geometry(
        self,
        height: int,
        width: int,
        scale: tuple[float, float],
        rng: np.random.Generator | UniformsAhead,
    ) -> tuple[tuple[int, int, int, int], tuple[bool, bool, int]]:
        """One view's crop box (top, left, h, w) and (hflip, vflip, k quarter turns): at least
        `GEOMETRY_DRAWS` + rot90 uniforms (a crop box takes 2 per try, then 2 for its place;
        10 failed tries take 20 and fall back to the central crop)."""
        cfg = self.config
        box = sample_crop_box(height, width, scale, cfg.ratio, rng)
        hflip = rng.random() < cfg.hflip_p
        vflip = rng.random() < cfg.vflip_p
        k = int(rng.random() * 4) if cfg.rot90 else 0  # counter-clockwise quarter turns
        return box, (hflip, vflip, k)

    def _augment(
        self,
        image: np.ndarray,
        out: np.ndarray,
        scale: tuple[float, float],
        blur_p: float,
        solarize_p: float,
        rng: np.random.Generator | UniformsAhead,
    ) -> None:
        """Write one augmented crop of ``image`` into ``out`` (uint8 [S, S, 3]).

        Draw order: crop box, hflip, vflip, rot90 k (if enabled), then unless photometric ops
        are off on the host: hed?, hed factors (only if hed_p > 0), jitter?, jitter order+factors,
        grayscale?, blur?, blur sigma, solarize? (only where its probability is > 0).
        """
        (top, left, h, w), orient = self._draw_geometry(*image.shape[:2], scale, rng)
        resize(image[top : top + h, left : left + w], out.shape[0], out)
        orient_inplace(out, *orient)
        if not self.config.photometric_on_host:
            return
        colour = self.config.photometric
        if colour.hed_p > 0 and rng.random() < colour.hed_p:
            buf = self._buffer(out.shape[0])
            np.copyto(buf, out)
            _to_uint8(_hed(buf, *_hed_factors(colour.hed_sigma, colour.hed_bias, rng)), out)
        if rng.random() < colour.color_jitter_p:
            buf = self._buffer(out.shape[0])
            np.copyto(buf, out)
            f = _jitter(buf, colour.brightness, colour.contrast, colour.saturation, colour.hue, rng)
            _to_uint8(f, out)
        if rng.random() < colour.grayscale_p:
            _grayscale_inplace(out, self._buffer(out.shape[0]))
        if rng.random() < blur_p:
            gaussian_blur(out, rng.uniform(*colour.blur_sigma), out=out)
        if solarize_p > 0 and rng.random() < solarize_p:
            solarize(out, out=out)

    def _views_to_cut(self, image: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """The views drawn exactly as `_augment` draws them, left for the device to cut
        (``pathfm.data.device_crops``): the patch, int32 boxes [V, 4] (top, left, h, w) and
        orientations [V, 3] (hflip, vflip, k); the 2 global views first, then the local ones."""
        cfg = self.config
        scales = [cfg.global_scale] * 2 + [cfg.local_scale] * cfg.n_local
        draws = self._geometry_uniforms(rng, len(scales))
        drawn = [self._draw_geometry(*image.shape[:2], s, draws) for s in scales]
        return {
            "patches": image,
            "crop_boxes": np.array([box for box, _ in drawn], np.int32).reshape(-1, 4),
            "crop_orient": np.array([o for _, o in drawn], np.int32).reshape(-1, 3),
        }

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """uint8 [H, W, 3] -> {"global_crops": [2, G, G, 3], "local_crops": [n_local, L, L, 3]},
        or with ``geometry_on_host=False`` the patch and its views (`_views_to_cut`)."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise DataError(
                f"multi-crop expects a uint8 RGB patch [H, W, 3], got {image.dtype} {image.shape}"
            )
        cfg = self.config
        if not cfg.geometry_on_host:
            return self._views_to_cut(image, rng)
        if not cfg.photometric_on_host:  # only geometry draws: all of them in one block
            rng = self._geometry_uniforms(rng, 2 + cfg.n_local)
        g, loc = cfg.global_size, cfg.local_size
        global_crops = np.empty((2, g, g, 3), np.uint8)
        local_crops = np.empty((cfg.n_local, loc, loc, 3), np.uint8)
        colour = cfg.photometric
        for i in range(2):
            blur_p, sol_p = colour.blur_p[i], colour.solarize_p[i]
            self._augment(image, global_crops[i], cfg.global_scale, blur_p, sol_p, rng)
        for i in range(cfg.n_local):
            self._augment(image, local_crops[i], cfg.local_scale, colour.blur_p[2], 0.0, rng)
        return {"global_crops": global_crops, "local_crops": local_crops}


def multicrop_config(config: ml_collections.ConfigDict) -> MultiCropConfig:
    """The multi-crop settings of `config.crops` (host pipeline and on-device colour ops)."""
    cr = config.crops
    return MultiCropConfig(
        global_size=cr.global_size,
        local_size=cr.local_size,
        n_local=cr.n_local,
        global_scale=tuple(cr.global_scale),
        local_scale=tuple(cr.local_scale),
        vflip_p=cr.vflip_p,
        rot90=cr.rot90,
        color_jitter_p=cr.color_jitter_p,
        grayscale_p=cr.grayscale_p,
        blur_sigma=tuple(cr.blur_sigma),
        hed_p=cr.hed_p,
        hed_sigma=cr.hed_sigma,
        hed_bias=cr.hed_bias,
        photometric_on_host=not cr.photometric_on_device,
        geometry_on_host=not cr.geometry_on_device,
    )
