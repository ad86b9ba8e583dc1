"""Image decoding and the batched tensor transforms shared by detection and classification.

Geometry conventions (the training and evaluation code rely on them):

* An image is resized once, at decode time, to the largest size that fits the H x W canvas of
  the resolution (``scale = min(H / height, W / width)``; R / longest side for a square R x R),
  then placed at its top-left (letterboxed); the rest of the canvas is padding (bottom/right).
* Images are normalized with the ImageNet mean/std; padding is 0 after normalization (the mean
  colour), as in the official EfficientDet input pipeline.
* Boxes are float xyxy in pixels of that canvas. Eval mode maps back to the original image by
  ``original = input / scale``.
* Training augmentation is one affine warp per image (horizontal flip, scale jitter, random crop
  or pad back to H x W), done for the whole batch with ``grid_sample`` on whatever device the
  batch lives on; boxes go through the same map.
"""

from __future__ import annotations

import functools
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from scaling_lab.errors import ScalingLabError
from scaling_lab.resolution import Resolution, image_size

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# A box cropped to less than this fraction of its area is no longer a recognisable object.
MIN_VISIBLE_FRACTION = 0.1


def resized_size(height: int, width: int, resolution: Resolution) -> tuple[int, int, float]:
    """(height, width, scale) after resizing to the largest size that fits the ``resolution`` canvas."""
    canvas_height, canvas_width = image_size(resolution)
    scale = min(canvas_height / height, canvas_width / width)
    return max(1, round(height * scale)), max(1, round(width * scale)), scale


def load_image_resized(
    path: Path, resolution: Resolution, expected_size: tuple[int, int] | None = None
) -> tuple[np.ndarray, float]:
    """Decode an image as RGB uint8 [h, w, 3] resized to fit the ``resolution`` canvas, and its scale.

    ``expected_size`` (height, width) is what the annotation file claims; boxes are in that frame,
    so a different size on disk is an error rather than silently misplaced boxes.
    """
    try:
        with Image.open(path) as image:
            width, height = image.size
            if expected_size is not None and (height, width) != tuple(expected_size):
                raise ScalingLabError(
                    f"image {path} is {width}x{height} (width x height) on disk but the annotation "
                    f"file says {expected_size[1]}x{expected_size[0]}; fix the annotation's width/height"
                )
            new_height, new_width, scale = resized_size(height, width, resolution)
            image.draft("RGB", (new_width, new_height))  # JPEG: decode at a reduced size, much faster
            image = to_rgb(image)
            if image.size != (new_width, new_height):
                image = image.resize((new_width, new_height), Image.BILINEAR)
            return np.array(image), scale  # a writable copy, for torch.from_numpy
    except FileNotFoundError:
        raise ScalingLabError(f"image file {path} does not exist") from None
    except Image.DecompressionBombError as error:
        raise ScalingLabError(f"image file {path} {_bomb(error)}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ScalingLabError(f"image file {path} cannot be read as an image ({error})") from None


# Pixel modes PIL converts to 8-bit RGB faithfully, and 16-bit grey, which ``to_rgb`` scales down.
# 32-bit integer ("I") and float ("F") pixels have no known range, so they are refused.
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
CONVERTIBLE_MODES = frozenset({"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"}) | SIXTEEN_BIT_MODES


def mode_problem(mode: str) -> str | None:
    """Why images of this PIL pixel mode cannot be trained on, or None."""
    if mode in CONVERTIBLE_MODES:
        return None
    return (
        f"has pixel mode {mode!r} (32-bit integer or float pixels, of no known range), which cannot be converted to 8-bit RGB "
        "faithfully; convert it to 8- or 16-bit first"
    )


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB with the image's range kept: 16-bit grey is scaled by 255/65535 (PIL's own
    conversion clips it, so most of a 16-bit image would turn white)."""
    if image.mode in SIXTEEN_BIT_MODES:
        pixels = np.asarray(image, dtype=np.uint16).astype(np.float32)
        image = Image.fromarray(np.round(pixels * (255 / 65535)).astype(np.uint8), "L")
    return image.convert("RGB")


def _bomb(error: Exception | None = None, width: int = 0, height: int = 0) -> str:
    declared = f"declares {width}x{height} pixels, " if width else ""
    return (
        f"{declared}over the {Image.MAX_IMAGE_PIXELS / 1e6:.0f}-megapixel limit (a decompression bomb, or an image far too "
        f"large to train on{f': {error}' if error else ''})"
    )


def image_problem(path: Path, expected_size: tuple[int, int] | None = None) -> str | None:
    """Why the image file ``path`` cannot be used, read from its header and (PNG) chunk
    checksums without decoding it: missing, not an image, a decompression bomb, truncated, or
    not the (height, width) its annotation says. None when it looks usable. Remembered per
    file version (size and modification time): every trial of a study loads the same data."""
    try:
        status = os.stat(path)
    except FileNotFoundError:
        return "does not exist"
    except OSError as error:
        return f"cannot be read ({error.strerror})"
    return _file_problem(str(path), status.st_size, status.st_mtime_ns, tuple(expected_size) if expected_size is not None else None)


@functools.lru_cache(maxsize=1 << 20)
def _file_problem(path: str, size: int, modified_ns: int, expected_size: tuple[int, int] | None) -> str | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if width * height > Image.MAX_IMAGE_PIXELS:
                    return _bomb(width=width, height=height)
                if expected_size is not None and (height, width) != tuple(expected_size):
                    return f"is {width}x{height} (width x height) on disk but the annotation says {expected_size[1]}x{expected_size[0]}"
                problem = mode_problem(image.mode)
                if problem:
                    return problem
                image.verify()
    except FileNotFoundError:
        return "does not exist"
    except Image.DecompressionBombError as error:
        return _bomb(error)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        return f"cannot be read as an image ({error})"
    return None


def normalize_padded(pixels: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """uint8 canvases [B, 3, H, W] with content sizes [B, 2] (h, w) -> normalized float32, padding 0."""
    std = torch.tensor(IMAGENET_STD, device=pixels.device).view(1, 3, 1, 1)
    mean = torch.tensor(IMAGENET_MEAN, device=pixels.device).view(1, 3, 1, 1)
    images = torch.addcmul(-mean / std, pixels, 1 / (255 * std))  # one pass, uint8 in, float32 out
    for image, (height, width) in zip(images, sizes.tolist()):
        image[:, height:] = 0
        image[:, :, width:] = 0
    return images


@dataclass
class Augmentation:
    """Per-image random parameters of the training warp (all tensors of length B).

    The warp maps a point (x, y) of the un-augmented canvas to
    ``(scale * (width - x if flip else x) - offset_x, scale * y - offset_y)``.
    """

    flip: torch.Tensor  # bool
    scale: torch.Tensor  # float32
    offset_x: torch.Tensor  # float32, pixels of the scaled image cropped off at the left
    offset_y: torch.Tensor

    def to(self, device: torch.device | str) -> "Augmentation":
        return Augmentation(*(value.to(device) for value in (self.flip, self.scale, self.offset_x, self.offset_y)))


def sample_augmentation(
    sizes: torch.Tensor,
    resolution: Resolution,
    generator: torch.Generator,
    scale_range: tuple[float, float] = (0.8, 1.2),
    flip_probability: float = 0.5,
    rows: torch.Tensor | None = None,
    drawn: int | None = None,
) -> Augmentation:
    """Random flip, scale jitter and crop offset for content sizes [B, 2] (h, w), drawn on the CPU.

    Drawing on the CPU keeps a seeded run identical whatever device the batch is on. When the
    scaled image is larger than the canvas a random window is cropped; when smaller it stays at
    the top-left (padding bottom/right, as in eval). A worker's share of a global batch gives its
    ``rows`` in a batch of ``drawn`` images: the numbers are drawn for the whole batch, so each
    image gets what it gets in one process.
    """
    count = sizes.shape[0] if drawn is None else drawn
    mine = slice(None) if rows is None else rows
    flip = (torch.rand(count, generator=generator) < flip_probability)[mine]
    low, high = scale_range
    scale = (low + (high - low) * torch.rand(count, generator=generator))[mine]
    sizes = sizes.cpu().float()
    spare_y, spare_x = ((sizes * scale.unsqueeze(1)) - torch.tensor(image_size(resolution))).clamp(min=0).unbind(1)
    offset_y = spare_y * torch.rand(count, generator=generator)[mine]
    offset_x = spare_x * torch.rand(count, generator=generator)[mine]
    return Augmentation(flip, scale, offset_x, offset_y)


def warp_images(images: torch.Tensor, sizes: torch.Tensor, augmentation: Augmentation) -> torch.Tensor:
    """Apply the augmentation warp to normalized canvases [B, 3, H, W] (bilinear, padding 0)."""
    batch, _, height, width = images.shape
    centers_x = torch.arange(width, device=images.device, dtype=torch.float32) + 0.5
    centers_y = torch.arange(height, device=images.device, dtype=torch.float32) + 0.5
    scale = augmentation.scale.view(-1, 1)
    source_x = (centers_x.view(1, -1) + augmentation.offset_x.view(-1, 1)) / scale
    source_x = torch.where(augmentation.flip.view(-1, 1), sizes[:, 1:2].float() - source_x, source_x)
    source_y = (centers_y.view(1, -1) + augmentation.offset_y.view(-1, 1)) / scale
    grid = torch.empty(batch, height, width, 2, device=images.device)
    grid[..., 0] = (2 * source_x / width - 1).view(batch, 1, width)
    grid[..., 1] = (2 * source_y / height - 1).view(batch, height, 1)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def visible_sizes(sizes: torch.Tensor, resolution: Resolution, augmentation: Augmentation) -> torch.Tensor:
    """The (height, width) [B, 2] of the image area left on the canvas after the warp (content
    sizes [B, 2] scaled, minus the crop offset, cut at the canvas); a flip keeps it."""
    offsets = torch.stack((augmentation.offset_y, augmentation.offset_x), 1)
    visible = sizes.float() * augmentation.scale.view(-1, 1) - offsets
    return torch.minimum(visible, torch.tensor(image_size(resolution), dtype=visible.dtype, device=visible.device))


def warp_boxes(
    boxes: torch.Tensor, labels: torch.Tensor, sizes: torch.Tensor, resolution: Resolution, augmentation: Augmentation
) -> tuple[torch.Tensor, torch.Tensor]:
    """Move padded boxes [B, M, 4] through the warp, clip them to the visible image and mark the
    ones cropped to (almost) nothing as padding (label -1)."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    flip = augmentation.flip.view(-1, 1)
    content_width = sizes[:, 1:2].float()
    x1, x2 = torch.where(flip, content_width - x2, x1), torch.where(flip, content_width - x1, x2)
    scale = augmentation.scale.view(-1, 1)
    offset_x, offset_y = augmentation.offset_x.view(-1, 1), augmentation.offset_y.view(-1, 1)
    warped = torch.stack((x1 * scale - offset_x, y1 * scale - offset_y, x2 * scale - offset_x, y2 * scale - offset_y), -1)
    visible_height, visible_width = visible_sizes(sizes, resolution, augmentation).unsqueeze(-1).unbind(1)
    canvas_height, canvas_width = image_size(resolution)
    clipped = torch.stack(
        (
            warped[..., 0].clamp(0, canvas_width),
            warped[..., 1].clamp(0, canvas_height),
            torch.minimum(warped[..., 2], visible_width).clamp(min=0),
            torch.minimum(warped[..., 3], visible_height).clamp(min=0),
        ),
        -1,
    )
    area = box_area(warped)
    keep = (labels >= 0) & (box_area(clipped) >= MIN_VISIBLE_FRACTION * area) & (area > 0)
    keep &= (clipped[..., 2] > clipped[..., 0]) & (clipped[..., 3] > clipped[..., 1])
    return compact_targets(clipped, torch.where(keep, labels, -1))


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)


def compact_targets(boxes: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move valid boxes (label >= 0) first, zero the padding and trim M to the most valid boxes
    of any image (at least 1)."""
    valid = labels >= 0
    order = torch.argsort((~valid).to(torch.int8), dim=1, stable=True)
    labels = torch.gather(labels, 1, order)
    boxes = torch.gather(boxes, 1, order.unsqueeze(-1).expand(-1, -1, 4))
    valid = labels >= 0
    boxes = boxes * valid.unsqueeze(-1)
    keep = max(1, int(valid.sum(1).max()))
    return boxes[:, :keep].contiguous(), labels[:, :keep].contiguous()
