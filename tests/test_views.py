"""Batched views: shapes, ranges, determinism, and each op doing what it says."""
import torch

from sharpshift.config import ViewsConfig
from sharpshift.data import views as V


def params(**kw):
    base = dict(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, brightness=0.4,
                contrast=0.4, saturation=0.2, hue=0.1, grayscale_p=0.0, blur_p=0.0, blur_sigma=(0.1, 2.0),
                solarize_p=0.0)
    base.update(kw)
    return V.ViewParams(**base)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_full_crop_without_flip_is_identity():
    x = torch.rand(4, 3, 16, 16)
    y = V.augment(x, params(), gen(), 16)
    assert torch.allclose(x, y, atol=1e-5)


def test_flip_mirrors_the_image():
    x = torch.rand(4, 1, 8, 8)
    y = V.augment(x, params(flip_p=1.0), gen(), 8)
    assert torch.allclose(y, x.flip(-1), atol=1e-5)


def test_crop_zooms_into_a_region():
    x = torch.zeros(2, 1, 32, 32)
    x[:, :, 8:24, 8:24] = 1.0  # a bright centre square
    # a crop of a quarter of the area, centred at random: output mean differs from the input mean
    y = V.resized_crop_flip(x, params(crop_scale=(0.25, 0.25)), gen(), 32)
    assert y.shape == x.shape and not torch.allclose(y.mean(), x.mean())


def test_grayscale_makes_channels_equal_and_is_skipped_for_one_channel():
    x = torch.rand(3, 3, 8, 8)
    y = V.random_grayscale(x, params(grayscale_p=1.0), gen())
    assert torch.allclose(y[:, 0], y[:, 1]) and torch.allclose(y[:, 1], y[:, 2])
    x1 = torch.rand(3, 1, 8, 8)
    assert torch.equal(V.random_grayscale(x1, params(grayscale_p=1.0), gen()), x1)


def test_blur_lowers_variance_and_keeps_the_mean():
    x = torch.rand(4, 1, 28, 28)
    y = V.gaussian_blur(x, params(blur_p=1.0, blur_sigma=(1.5, 1.5)), gen())
    assert (y.var(dim=(2, 3)) < x.var(dim=(2, 3)) * 0.5).all()
    assert torch.allclose(y.mean(dim=(2, 3)), x.mean(dim=(2, 3)), atol=0.02)


def test_solarize_inverts_bright_pixels_only():
    x = torch.tensor([0.1, 0.4, 0.6, 0.9]).view(1, 1, 1, 4)
    y = V.solarize(x, params(solarize_p=1.0), gen())
    assert torch.allclose(y.flatten(), torch.tensor([0.1, 0.4, 0.4, 0.1]))


def test_jitter_on_one_channel_changes_brightness_and_contrast_only():
    x = torch.rand(8, 1, 8, 8)
    y = V.color_jitter(x, params(jitter_p=1.0), gen())
    assert y.shape == x.shape and not torch.allclose(x, y) and y.min() >= 0 and y.max() <= 1


def test_generator_views_shapes_range_and_seed():
    cfg = ViewsConfig()
    ps = V.view_params(cfg, "asymmetric", 28)
    assert [p.blur_p for p in ps] == [1.0, 0.1] and [p.solarize_p for p in ps] == [0.0, 0.2]
    images = torch.randint(0, 256, (16, 1, 28, 28), dtype=torch.uint8)
    g1 = V.ViewGenerator(ps, [0.5], [0.25], 28, seed=3)
    g2 = V.ViewGenerator(ps, [0.5], [0.25], 28, seed=3)
    a, b = g1(images), g2(images)
    assert len(a) == 2 and a[0].shape == (16, 1, 28, 28)
    assert all(torch.equal(u, v) for u, v in zip(a, b))  # same seed, same views
    assert not torch.equal(a[0], a[1])  # two different views
    for v in a:  # normalised from [0, 1]
        assert v.min() >= (0 - 0.5) / 0.25 - 1e-5 and v.max() <= (1 - 0.5) / 0.25 + 1e-5
    assert not torch.equal(V.ViewGenerator(ps, [0.5], [0.25], 28, seed=4)(images)[0], a[0])


def test_colour_pipeline_runs_batched_on_rgb():
    ps = V.view_params(ViewsConfig(jitter_p=1.0, grayscale_p=0.5), "symmetric", 32)
    views = V.ViewGenerator(ps, [0.5] * 3, [0.25] * 3, 32)(torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8))
    assert views[0].shape == (8, 3, 32, 32) and torch.isfinite(views[0]).all()
