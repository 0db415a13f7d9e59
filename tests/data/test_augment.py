"""Tests for the DINO multi-crop augmentation (pathfm.data.augment)."""

import colorsys
import dataclasses
import pickle
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest
from PIL import Image

from pathfm.data import augment as A
from pathfm.errors import ConfigError, DataError


def _rng(seed: int = 0) -> np.random.Generator:
    """Seeded generator."""
    return np.random.default_rng(seed)


def _image(h: int = 256, w: int = 256, seed: int = 0) -> np.ndarray:
    """Smooth random uint8 RGB image [h, w, 3]."""
    img = _rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return cv2.GaussianBlur(img, (5, 5), 1.5)


def _pil_luma(img: np.ndarray) -> np.ndarray:
    """PIL convert('L') integer formula on uint8 [..., 3]."""
    rgb = img.astype(np.int64)
    return (rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16


def _plain(**kw) -> A.MultiCropConfig:
    """Config with every photometric op switched off (geometry only), overridable."""
    off = {"hflip_p": 0.0, "color_jitter_p": 0.0, "grayscale_p": 0.0}
    off |= {"blur_p": (0.0, 0.0, 0.0), "solarize_p": (0.0, 0.0)}
    return A.MultiCropConfig(**(off | kw))


@pytest.mark.parametrize(
    ("cfg", "hw"),
    [
        (A.MultiCropConfig(), (256, 256)),
        (A.MultiCropConfig(n_local=0), (256, 256)),
        (
            A.MultiCropConfig(global_size=64, local_size=32, n_local=3, vflip_p=0.5, rot90=True),
            (300, 200),
        ),
        (A.MultiCropConfig(global_size=32, local_size=16, n_local=10), (24, 40)),
    ],
)
def test_output_shapes_and_dtypes(cfg: A.MultiCropConfig, hw: tuple[int, int]) -> None:
    out = A.DinoMultiCrop(cfg)(_image(*hw), _rng())
    g, loc = out["global_crops"], out["local_crops"]
    assert g.shape == (2, cfg.global_size, cfg.global_size, 3) and g.dtype == np.uint8
    assert loc.shape == (cfg.n_local, cfg.local_size, cfg.local_size, 3) and loc.dtype == np.uint8
    assert g.std() > 1.0  # real image content, not an empty buffer


def test_rrc_full_box_is_plain_resize() -> None:
    img = _image(32, 32)
    for size, interp in ((16, cv2.INTER_AREA), (64, cv2.INTER_CUBIC)):
        got = A.random_resized_crop(img, size, (1.0, 1.0), (1.0, 1.0), _rng())
        np.testing.assert_array_equal(got, cv2.resize(img, (size, size), interpolation=interp))
    np.testing.assert_array_equal(A.random_resized_crop(img, 32, (1, 1), (1, 1), _rng()), img)


def test_rrc_uses_the_sampled_box() -> None:
    img = _image(120, 90)
    top, left, h, w = A.sample_crop_box(120, 90, (0.05, 0.4), (3 / 4, 4 / 3), _rng(3))
    got = A.random_resized_crop(img, 48, (0.05, 0.4), (3 / 4, 4 / 3), _rng(3))
    np.testing.assert_array_equal(got, A.resize(img[top : top + h, left : left + w], 48))


def test_resize_paths() -> None:
    img, area, cubic, linear = _image(150, 150), cv2.INTER_AREA, cv2.INTER_CUBIC, cv2.INTER_LINEAR

    def cv(x: np.ndarray, dsize: tuple[int, int], interp: int) -> np.ndarray:
        return cv2.resize(x, dsize, interpolation=interp)

    # (crop h, crop w) -> interpolation: some axis shrunk >= 1.5x -> AREA, both shrunk less (or
    # kept) -> LINEAR, any enlarged -> CUBIC
    cases = [((120, 100), linear), ((96, 140), linear), ((144, 100), area), ((150, 96), area)]
    cases += [((60, 80), cubic), ((96, 50), cubic), ((140, 50), cubic)]
    for (h, w), interp in cases:
        np.testing.assert_array_equal(A.resize(img[:h, :w], 96), cv(img[:h, :w], (96, 96), interp))
    mixed = cv(cv(img[:150, :50], (50, 96), area), (96, 96), cubic)  # shrink h, then enlarge w
    np.testing.assert_array_equal(A.resize(img[:150, :50], 96), mixed)
    out = np.empty((96, 96, 3), np.uint8)
    assert A.resize(img[:50, :150], 96, out=out) is out
    const = np.full((200, 50, 3), 91, np.uint8)  # shrinks in height, enlarges in width
    assert np.all(A.resize(const, 96) == 91)


def test_resize_stays_close_to_torchvision_bicubic() -> None:
    """DINO resizes with PIL bicubic (antialiased). Over its local crops of a textured image the
    cv2 choice stays within 2 grey levels of it, and where INTER_LINEAR replaces INTER_AREA (both
    axes shrunk by less than 1.5x) it is no further from PIL than INTER_AREA."""
    img = _image(224, 224)
    rng, ours, linear, area = _rng(5), [], [], []
    for _ in range(60):
        top, left, h, w = A.sample_crop_box(224, 224, (0.05, 0.32), (3 / 4, 4 / 3), rng)
        crop = np.ascontiguousarray(img[top : top + h, left : left + w])
        pil = np.asarray(Image.fromarray(crop).resize((96, 96), Image.BICUBIC)).astype(int)
        ours.append(np.abs(A.resize(crop, 96) - pil).mean())
        if 96 <= min(h, w) and max(h, w) < A.AREA_MIN_SHRINK * 96:
            linear.append(ours[-1])
            area.append(
                np.abs(cv2.resize(crop, (96, 96), interpolation=cv2.INTER_AREA) - pil).mean()
            )
    assert np.mean(ours) < 2.0 and len(linear) >= 5
    assert np.mean(linear) <= np.mean(area)


_RANGES = [((0.4, 1.0), (3 / 4, 4 / 3)), ((0.05, 0.4), (0.5, 2.0))]


@pytest.mark.parametrize(("scale", "ratio"), _RANGES)
def test_sample_crop_box_area_and_aspect(scale, ratio) -> None:
    rng, (H, W) = _rng(1), (1000, 1200)
    boxes = np.array([A.sample_crop_box(H, W, scale, ratio, rng) for _ in range(2000)])
    top, left, h, w = boxes.T
    assert np.all(top >= 0) and np.all(left >= 0)
    assert np.all(top + h <= H) and np.all(left + w <= W)
    frac, aspect = h * w / (H * W), w / h
    assert frac.min() >= scale[0] * 0.99 and frac.max() <= scale[1] * 1.01
    assert aspect.min() >= ratio[0] * 0.99 and aspect.max() <= ratio[1] * 1.01
    # The draws cover both ranges.
    assert frac.min() < scale[0] + 0.05 and frac.max() > scale[1] - 0.1
    assert aspect.min() < ratio[0] * 1.05 and aspect.max() > ratio[1] * 0.95


@pytest.mark.parametrize("scale", [(0.05, 0.4), (0.4, 1.0), (2.0, 3.0)])  # 3: 10 failed tries
def test_uniforms_ahead_draw_what_scalar_calls_draw(scale) -> None:
    """Crop boxes from a block of uniforms drawn ahead equal those of one `rng.random()` per
    draw, including retries and the fallback, and leave the generator where the calls leave it
    (the next sample's draws, and the device and host crop paths, stay the same)."""
    for seed in range(20):
        scalar, block = _rng(seed), _rng(seed)
        block.integers(1000)  # a buffered 32-bit half must survive too
        scalar.integers(1000)
        ahead = A.UniformsAhead(block, 3 * A.GEOMETRY_DRAWS)
        for _ in range(3):
            box = A.sample_crop_box(60, 90, scale, (3 / 4, 4 / 3), scalar)
            assert A.sample_crop_box(60, 90, scale, (3 / 4, 4 / 3), ahead) == box
            flips = [scalar.random() for _ in range(2)]
            assert [ahead.random() for _ in range(2)] == flips
        assert block.bit_generator.state == scalar.bit_generator.state
        assert block.random() == scalar.random()


def test_sample_crop_box_fallback() -> None:
    impossible = (2.0, 3.0)  # every attempt asks for more than the whole image
    assert A.sample_crop_box(10, 20, impossible, (1.0, 1.0), _rng()) == (0, 5, 10, 10)
    assert A.sample_crop_box(20, 10, impossible, (1.0, 1.0), _rng()) == (5, 0, 10, 10)
    assert A.sample_crop_box(30, 30, impossible, (3 / 4, 4 / 3), _rng()) == (0, 0, 30, 30)
    assert A.sample_crop_box(10, 40, impossible, (0.5, 2.0), _rng()) == (0, 10, 10, 20)


def test_adjust_brightness_hand_values() -> None:
    img = np.array([[[100, 200, 50]]], np.uint8)
    np.testing.assert_array_equal(A.adjust_brightness(img, 1.5), [[[150, 255, 75]]])
    np.testing.assert_array_equal(A.adjust_brightness(img, 0.5), [[[50, 100, 25]]])
    np.testing.assert_array_equal(A.adjust_brightness(img, 0.0), [[[0, 0, 0]]])
    f = A.adjust_brightness(img.astype(np.float32), 0.3)
    assert f.dtype == np.float32
    np.testing.assert_allclose(f, [[[30, 60, 15]]], rtol=1e-6)


def test_adjust_contrast_hand_values() -> None:
    img = np.array([[[10, 20, 30], [200, 100, 50]]], np.uint8)
    # grey = 0.299 R + 0.587 G + 0.114 B -> 18.15 and 124.2, mean 71.175
    np.testing.assert_array_equal(A.adjust_contrast(img, 0.0), np.full((1, 2, 3), 71))
    np.testing.assert_array_equal(A.adjust_contrast(img, 2.0), [[[0, 0, 0], [255, 129, 29]]])
    np.testing.assert_array_equal(A.adjust_contrast(img, 1.0), img)
    noise = _image(16, 16)
    mean = np.mean(_pil_luma(noise))  # contrast 0 gives the mean grey everywhere
    assert np.all(np.abs(A.adjust_contrast(noise, 0.0).astype(float) - mean) <= 0.51)


def test_adjust_saturation_hand_values() -> None:
    img = np.array([[[100, 150, 200]]], np.uint8)  # grey 140.75
    np.testing.assert_array_equal(A.adjust_saturation(img, 2.0), [[[59, 159, 255]]])
    np.testing.assert_array_equal(A.adjust_saturation(img, 0.5), [[[120, 145, 170]]])
    noise = _image(16, 16)
    np.testing.assert_array_equal(A.adjust_saturation(noise, 1.0), noise)
    diff = A.adjust_saturation(noise, 0.0).astype(int) - A.to_grayscale(noise)
    assert np.abs(diff).max() <= 1


def test_adjust_hue() -> None:
    red = np.array([[[255, 0, 0]]], np.uint8)
    np.testing.assert_array_equal(A.adjust_hue(red, 0.5), [[[0, 255, 255]]])
    np.testing.assert_array_equal(A.adjust_hue(red, 1 / 3), [[[0, 255, 0]]])
    np.testing.assert_array_equal(A.adjust_hue(red, -1 / 3), [[[0, 0, 255]]])
    noise = _rng(4).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    assert np.abs(A.adjust_hue(noise, 0.0).astype(int) - noise).max() <= 1
    for factor in (0.1, -0.27, 0.5):  # colorsys (float HSV) as the reference
        got = A.adjust_hue(noise, factor).reshape(-1, 3).astype(float)
        for px, out in zip(noise.reshape(-1, 3)[:200] / 255.0, got[:200], strict=True):
            h, s, v = colorsys.rgb_to_hsv(*px)
            ref = np.array(colorsys.hsv_to_rgb((h + factor) % 1.0, s, v)) * 255
            assert np.abs(out - ref).max() <= 0.51
    with pytest.raises(ValueError):
        A.adjust_hue(red, 0.6)


def test_color_jitter_order_and_ranges() -> None:
    img = _image(16, 16)
    np.testing.assert_array_equal(A.color_jitter(img, 0, 0, 0, 0, _rng()), img)
    # White box: same draws (8 uniforms: 4 for the order, then b, c, s, h), ops applied in the
    # drawn order on float32 and rounded once.
    for seed in range(5):
        u = _rng(seed).random(8)
        order = np.argsort(u[:4])
        b, c, s = 0.6 + 0.8 * u[4], 0.6 + 0.8 * u[5], 0.8 + 0.4 * u[6]
        ops = [(A.adjust_brightness, b), (A.adjust_contrast, c), (A.adjust_saturation, s)]
        ops.append((A.adjust_hue, 0.1 * (2 * u[7] - 1)))
        f = img.astype(np.float32)
        for idx in order:
            fn, factor = ops[idx]
            f = fn(f, factor)
        got = A.color_jitter(img, 0.4, 0.4, 0.2, 0.1, _rng(seed))
        np.testing.assert_array_equal(got, np.rint(f).astype(np.uint8))
    orders = {tuple(np.argsort(_rng(i).random(8)[:4])) for i in range(200)}
    assert len(orders) == 24  # every permutation of the 4 ops occurs
    grey = np.full((4, 4, 3), 100, np.uint8)  # brightness only: factor ~ U(0.6, 1.4)
    vals = np.array([A.color_jitter(grey, 0.4, 0, 0, 0, _rng(i))[0, 0, 0] for i in range(300)])
    assert vals.min() >= 60 and vals.max() <= 140
    assert vals.min() < 65 and vals.max() > 135


def test_to_grayscale_exact() -> None:
    img = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255], [1, 2, 3]]], np.uint8)
    out = A.to_grayscale(img)
    np.testing.assert_array_equal(out[..., 0], [[76, 150, 29, 255, 2]])
    assert out.shape == img.shape and np.all(out == out[..., :1])
    noise = _rng(2).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    np.testing.assert_array_equal(A.to_grayscale(noise)[..., 1], _pil_luma(noise))


def test_solarize_exact() -> None:
    img = np.array([[[0, 127, 128], [200, 255, 1]]], np.uint8)
    np.testing.assert_array_equal(A.solarize(img), [[[0, 127, 127], [55, 0, 1]]])
    np.testing.assert_array_equal(A.solarize(img, threshold=200), [[[0, 127, 128], [55, 0, 1]]])


def test_gaussian_blur() -> None:
    const = np.full((40, 40, 3), 77, np.uint8)
    np.testing.assert_array_equal(A.gaussian_blur(const, 1.7), const)
    noise = _rng(5).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    stds = [A.gaussian_blur(noise, s).astype(float).std() for s in (0.5, 1.0, 2.0)]
    assert stds[0] < noise.std() and stds[2] < stds[1] < stds[0]
    assert abs(A.gaussian_blur(noise, 2.0).mean() - noise.mean()) < 1.0
    assert np.abs(A.gaussian_blur(noise, 0.1).astype(int) - noise).max() <= 1  # ~identity


def test_determinism() -> None:
    aug, img = A.DinoMultiCrop(A.MultiCropConfig(global_size=64, local_size=32)), _image(96, 96)
    a, b, c = aug(img, _rng(7)), aug(img, _rng(7)), aug(img, _rng(8))
    for key in ("global_crops", "local_crops"):
        np.testing.assert_array_equal(a[key], b[key])
        assert not np.array_equal(a[key], c[key])


def test_pipeline_jitter_matches_color_jitter() -> None:
    img = _image(24, 24)
    whole = dict(global_size=24, n_local=0, global_scale=(1.0, 1.0), ratio=(1.0, 1.0))
    aug = A.DinoMultiCrop(_plain(color_jitter_p=1.0, **whole))
    for seed in range(4):
        got = aug(img, _rng(seed))["global_crops"][0]
        rng = _rng(seed)
        rng.random(7)  # crop box (4 draws), hflip, vflip, apply-jitter
        np.testing.assert_array_equal(got, A.color_jitter(img, 0.4, 0.4, 0.2, 0.1, rng))


def test_pickle_and_threads() -> None:
    aug = A.DinoMultiCrop(A.MultiCropConfig(global_size=32, local_size=16, n_local=2))
    img = _image(48, 48)
    ref = [aug(img, _rng(s)) for s in range(8)]
    clone = pickle.loads(pickle.dumps(aug))  # per-thread work buffers are not pickled
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda s: clone(img, _rng(s)), range(8)))
    for a, b in zip(ref, got, strict=True):
        np.testing.assert_array_equal(a["global_crops"], b["global_crops"])
        np.testing.assert_array_equal(a["local_crops"], b["local_crops"])


def test_flips_and_rotations() -> None:
    img = _image(16, 16)
    whole = dict(global_size=16, n_local=0, global_scale=(1.0, 1.0), ratio=(1.0, 1.0))
    out = A.DinoMultiCrop(_plain(vflip_p=1.0, **whole))(img, _rng())["global_crops"]
    np.testing.assert_array_equal(out[0], img[::-1])
    out = A.DinoMultiCrop(_plain(hflip_p=1.0, vflip_p=1.0, **whole))(img, _rng())["global_crops"]
    np.testing.assert_array_equal(out[1], img[::-1, ::-1])
    aug, seen = A.DinoMultiCrop(_plain(rot90=True, **whole)), set()
    rots = [np.rot90(img, k) for k in range(4)]
    for i in range(40):
        for crop in aug(img, _rng(i))["global_crops"]:
            seen.add(next(k for k, r in enumerate(rots) if np.array_equal(crop, r)))
    assert seen == {0, 1, 2, 3}


@pytest.mark.parametrize("k", range(4))
@pytest.mark.parametrize("hflip", [False, True])
@pytest.mark.parametrize("vflip", [False, True])
def test_orient_is_the_flips_then_counterclockwise_quarter_turns(hflip, vflip, k) -> None:
    img = _rng(k).integers(0, 256, (5, 5, 3), dtype=np.uint8)  # no symmetry to hide a mistake
    flipped = img[:: -1 if vflip else 1, :: -1 if hflip else 1]
    out = img.copy()
    A.orient_inplace(out, hflip, vflip, k)
    np.testing.assert_array_equal(out, np.rot90(flipped, k))


def test_grayscale_probability() -> None:
    img = np.zeros((8, 8, 3), np.uint8)
    img[..., 0], img[..., 1] = 200, 40  # strongly coloured everywhere
    aug = A.DinoMultiCrop(_plain(global_size=4, local_size=4, n_local=2, grayscale_p=0.2))
    rng, n_grey, n = _rng(9), 0, 0
    for _ in range(1000):
        out = aug(img, rng)
        for crop in (*out["global_crops"], *out["local_crops"]):
            n_grey += int(np.all(crop == crop[..., :1]))
            n += 1
    assert abs(n_grey / n - 0.2) < 0.03  # 4000 draws: sd ~0.0063


def test_solarize_probability_only_on_second_global_crop() -> None:
    img = np.full((8, 8, 3), 200, np.uint8)  # solarized -> 55
    aug = A.DinoMultiCrop(_plain(global_size=4, local_size=4, n_local=2, solarize_p=(0.0, 0.5)))
    rng = _rng(10)
    outs = [aug(img, rng) for _ in range(400)]
    g1 = np.array([o["global_crops"][0, 0, 0, 0] for o in outs])
    g2 = np.array([o["global_crops"][1, 0, 0, 0] for o in outs])
    loc = np.array([o["local_crops"][:, 0, 0, 0] for o in outs])
    assert np.all(g1 == 200) and np.all(loc == 200)
    assert set(g2.tolist()) == {55, 200} and abs(np.mean(g2 == 55) - 0.5) < 0.1


def test_validation() -> None:
    with pytest.raises(ConfigError):
        A.MultiCropConfig(global_scale=(0.0, 1.0))
    with pytest.raises(ConfigError):
        A.MultiCropConfig(grayscale_p=1.5)
    with pytest.raises(ConfigError):
        A.MultiCropConfig(blur_p=(1.0, 0.1))
    with pytest.raises(ConfigError):
        A.MultiCropConfig(hue=0.7)
    aug = A.DinoMultiCrop(A.MultiCropConfig())
    with pytest.raises(DataError):
        aug(np.zeros((32, 32, 3), np.float32), _rng())
    with pytest.raises(DataError):
        aug(np.zeros((32, 32), np.uint8), _rng())


# Real-looking H&E colours: background, pale/strong eosin, cytoplasm, nuclei, dark chromatin.
_HE_COLOURS = [
    (255, 255, 255),
    (242, 228, 238),
    (233, 170, 205),
    (214, 120, 170),
    (180, 110, 160),
    (150, 85, 165),
    (110, 70, 150),
    (70, 40, 110),
    (40, 20, 70),
]


def test_hed_constants_and_round_trip() -> None:
    np.testing.assert_allclose(A.HED_FROM_RGB @ A.RGB_FROM_HED, np.eye(3), atol=1e-7)
    he = np.array([_HE_COLOURS], np.uint8)
    hed = A.rgb_to_hed(he)
    assert np.all(hed[..., 0][0, 1:] > 0) and np.all(hed[..., 1][0, 1:] > 0)  # H and E present
    np.testing.assert_allclose(hed[0, 0], 0.0, atol=1e-12)  # white: no stain
    back = np.rint(A.hed_to_rgb(hed) * 255)
    assert np.abs(back - he).max() <= 1
    noise = _rng(6).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    back = np.rint(A.hed_to_rgb(A.rgb_to_hed(noise)) * 255)
    assert np.abs(back - noise).max() <= 1
    np.testing.assert_allclose(A.rgb_to_hed(he / 255.0), hed)  # float input in [0, 1]


def test_adjust_hed_identity_and_reference() -> None:
    noise = _rng(7).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(A.adjust_hed(noise, np.ones(3), np.zeros(3)), noise)
    f = A.adjust_hed(noise.astype(np.float32), np.ones(3), np.zeros(3))
    assert f.dtype == np.float32 and np.abs(f - noise).max() < 1e-3
    alpha, beta = np.array([1.04, 0.97, 1.01]), np.array([0.03, -0.02, 0.01])
    ref = np.rint(A.hed_to_rgb(A.rgb_to_hed(noise) * alpha + beta) * 255)
    assert np.abs(A.adjust_hed(noise, alpha, beta) - ref).max() <= 1
    u = _rng(8).random(6)
    got = A.hed_jitter(noise, 0.1, 0.02, _rng(8))
    np.testing.assert_array_equal(
        got, A.adjust_hed(noise, 0.9 + 0.2 * u[:3], 0.02 * (2 * u[3:] - 1))
    )
    np.testing.assert_array_equal(A.hed_jitter(noise, 0.0, 0.0, _rng()), noise)


def test_hed_perturbs_haematoxylin_along_h() -> None:
    pixel = np.rint(A.hed_to_rgb(np.array([[[0.05, 0.0, 0.0]]])) * 255).astype(np.uint8)
    h0 = A.rgb_to_hed(pixel)[0, 0]
    assert h0[0] > 0.04 and np.abs(h0[1:]).max() < 2e-3  # a pure haematoxylin pixel
    for alpha, beta in (((1.4, 1.0, 1.0), (0, 0, 0)), ((1.0, 1.0, 1.0), (0.02, 0, 0))):
        out = A.adjust_hed(pixel, np.array(alpha), np.array(beta))
        delta = A.rgb_to_hed(out)[0, 0] - h0
        assert delta[0] > 0.015 and np.abs(delta[1:]).max() < 0.05 * delta[0]
        d_od = np.log(pixel[0, 0] / out[0, 0].astype(float))  # darker along the H colour
        cos = d_od @ A.RGB_FROM_HED[0] / np.linalg.norm(d_od) / np.linalg.norm(A.RGB_FROM_HED[0])
        assert cos > 0.99


def test_pipeline_hed_and_photometric_off() -> None:
    img = _image(24, 24)
    whole = dict(global_size=24, n_local=0, global_scale=(1.0, 1.0), ratio=(1.0, 1.0))
    aug = A.DinoMultiCrop(_plain(hed_p=1.0, hed_sigma=0.2, hed_bias=0.03, **whole))
    for seed in range(3):
        got = aug(img, _rng(seed))["global_crops"][0]
        rng = _rng(seed)
        rng.random(7)  # crop box (4 draws), hflip, vflip, apply-hed
        np.testing.assert_array_equal(got, A.hed_jitter(img, 0.2, 0.03, rng))
    # Host photometric off: geometry only, with no draws for the photometric ops.
    cfg = A.MultiCropConfig(global_size=32, local_size=16, n_local=3, hed_p=0.5, rot90=True)
    off = A.DinoMultiCrop(dataclasses.replace(cfg, photometric_on_host=False))
    img = _image(64, 64)
    got = off(img, _rng(11))
    rng, crops = _rng(11), []
    for size, scale in [(32, cfg.global_scale)] * 2 + [(16, cfg.local_scale)] * 3:
        crop = A.random_resized_crop(img, size, scale, cfg.ratio, rng)
        crop = crop[:, ::-1] if rng.random() < 0.5 else crop
        rng.random()  # vflip (p 0)
        crops.append(np.rot90(crop, int(rng.random() * 4)))
    np.testing.assert_array_equal(got["global_crops"], crops[:2])
    np.testing.assert_array_equal(got["local_crops"], crops[2:])


def test_hed_validation() -> None:
    for bad in ({"hed_p": 1.5}, {"hed_sigma": -0.1}, {"hed_sigma": 1.5}, {"hed_bias": -0.1}):
        with pytest.raises(ConfigError):
            A.MultiCropConfig(**bad)
