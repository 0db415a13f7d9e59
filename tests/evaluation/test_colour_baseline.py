"""The colour-statistics baseline sees colour and nothing else: hand-computed features of flat
images, blindness to where pixels are, and its score on the embedded synthetic task."""

import numpy as np

from pathfm.evaluation.colour_baseline import colour_features


def test_flat_image_features_by_hand():
    image = np.zeros((1, 4, 4, 3), np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = 255, 128, 0  # cells (7, 4, 0) of 8 per axis
    features = colour_features(image, bins=8)
    assert features.shape == (1, 8**3 + 15)
    hist = features[0, : 8**3]
    assert hist[(7 * 8 + 4) * 8 + 0] == 1.0 and hist.sum() == 1.0
    expected = [1.0, 128 / 255, 0.0]
    np.testing.assert_allclose(features[0, 512:515], expected, rtol=1e-6)  # means
    np.testing.assert_allclose(features[0, 515:518], 0.0, atol=1e-7)  # standard deviations
    for k in range(3):  # 10th, 50th and 90th percentiles of a flat image: the colour itself
        np.testing.assert_allclose(features[0, 518 + 3 * k : 521 + 3 * k], expected, rtol=1e-6)


def test_texture_does_not_change_the_features():
    """Shuffling pixels (any texture into noise) leaves every feature as it was."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 16, 16, 3), np.uint8)
    flat = images.reshape(3, -1, 3)
    shuffled = np.stack([f[rng.permutation(len(f))] for f in flat]).reshape(images.shape)
    np.testing.assert_allclose(colour_features(shuffled), colour_features(images), atol=1e-6)
    other = colour_features(255 - images)
    assert np.abs(other - colour_features(images)).max() > 0.1  # but colour does
