"""The batched, device-side image path gives the same tensors as the reference (torchvision / PIL)
transforms for fixed random parameters: the uint8 decode cache + centre crop against Resize +
CenterCrop, and the grid_sample random-resized-crop (+ flip) against torchvision's resized_crop."""

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision import transforms as T

from transferkit.data import ImageSet, decode_images
from transferkit.transforms import center_crop, crop_resize, sample_crop_params


def test_decode_cache_and_center_crop_equal_resize_center_crop(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i, (w, h) in enumerate([(60, 40), (40, 80), (50, 50)]):  # sides that scale to whole pixels
        p = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    resize, crop = 20, 16
    x, _, _ = decode_images(ImageSet(paths, np.zeros(3, int), ["a"]), resize, "bicubic")
    ref = T.Compose([T.Resize(resize, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(crop), T.PILToTensor()])
    for i, p in enumerate(paths):
        with Image.open(p) as im:
            want = ref(im.convert("RGB"))
        assert torch.equal(center_crop(x[i : i + 1], crop)[0], want), p
    y, _, _ = decode_images(ImageSet(paths, np.zeros(3, int), ["a"]), resize, "bicubic")  # from the cache file
    assert torch.equal(x, y)


def test_batched_random_resized_crop_equals_torchvision_for_fixed_parameters():
    g = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=g)
    # (left, top, width, height, sign) in pixels: a 16x16 box downsampled 2x; a 16x32 box downsampled
    # 2x and 4x and flipped. Whole-pixel boxes and integer factors: every sample falls inside the box,
    # so grid_sample must equal resized_crop (bilinear, no antialias) up to float rounding.
    boxes = [(4, 8, 16, 16, 1.0), (8, 0, 16, 32, -1.0)]
    cx = torch.tensor([(l + w / 2) / 32 for l, t, w, h, s in boxes])
    cy = torch.tensor([(t + h / 2) / 32 for l, t, w, h, s in boxes])
    w = torch.tensor([b[2] / 32 for b in boxes])
    h = torch.tensor([b[3] / 32 for b in boxes])
    sign = torch.tensor([b[4] for b in boxes])
    out = crop_resize(imgs, 8, (cx, cy, w, h, sign))
    for i, (left, top, bw, bh, s) in enumerate(boxes):
        ref = TF.resized_crop(imgs[i].float(), top, left, bh, bw, [8, 8], interpolation=T.InterpolationMode.BILINEAR, antialias=False)
        if s < 0:
            ref = TF.hflip(ref)
        torch.testing.assert_close(out[i], ref, atol=1e-4, rtol=0)


def test_crop_parameters_follow_their_distribution():
    g = torch.Generator().manual_seed(1)
    cx, cy, w, h, sign = sample_crop_params(20000, scale=(0.25, 1.0), generator=g)
    area = w * h
    assert 0.24 < area.min() and area.max() <= 1.0 + 1e-6
    assert ((cx - w / 2) >= -1e-6).all() and ((cx + w / 2) <= 1 + 1e-6).all()  # boxes inside the image
    assert abs((sign < 0).float().mean().item() - 0.5) < 0.02  # flips half the time
    _, _, _, _, s2 = sample_crop_params(100, flip=False, generator=g)
    assert (s2 > 0).all()


def test_a_long_strip_is_resampled_in_its_square_only_on_the_same_grid():
    """QA G: a 1 x 20,000 px PNG was resized whole before the centre crop (256 x 5,120,000 px, 6 GB);
    the square's box is resampled alone, on the full resize's grid (within 1 of it), and images of
    ordinary shapes are decoded exactly as before."""
    import numpy as np
    from PIL import Image

    from transferkit.data import _RESAMPLE, _to_square

    def full(img, size):  # the old path: resize the shorter side, then crop the centre
        w, h = img.size
        s = size / min(w, h)
        nw, nh = max(size, round(w * s)), max(size, round(h * s))
        left, top = (nw - size) // 2, (nh - size) // 2
        return np.asarray(img.resize((nw, nh), _RESAMPLE["bicubic"]).crop((left, top, left + size, top + size)))

    rng = np.random.default_rng(0)
    for w, h in ((40, 600), (700, 30), (300, 200), (64, 64)):
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        a, b = _to_square(img, 32, "bicubic"), full(img, 32)
        assert a.shape == (32, 32, 3) and np.abs(a.astype(int) - b).max() <= 1
        if max(w, h) <= 4 * min(w, h):
            assert np.array_equal(a, b)
    assert _to_square(Image.new("RGB", (1, 200_000), (9, 99, 199)), 224, "bicubic").tolist() == np.full((224, 224, 3), (9, 99, 199)).tolist()
