"""Image classification from a folder per class, and its loader.

Images get the detection geometry (longest side = R, top-left on an R x R canvas, padding
bottom/right) and the same train augmentation and seeding (see :mod:`scaling_lab.data.loader`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from scaling_lab.data.loader import BatchLoader
from scaling_lab.data.store import DEFAULT_MEMORY_BUDGET_BYTES, ImageStore, PixelBatch
from scaling_lab.data.transforms import image_problem
from scaling_lab.errors import ScalingLabError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class ImageFolderClassification:
    """``root/<class name>/<image>``: labels 0..K-1 follow the sorted class-folder names.

    Hidden entries and files without an image extension are skipped; image files that cannot be
    used (``image_problem``) are an error naming them, or with ``bad_data="skip"`` left out and
    counted in ``images_skipped``.
    """

    def __init__(self, root: str | Path, memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES, bad_data: str = "error") -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise ScalingLabError(f"classification folder {self.root} does not exist or is not a folder")
        folders = sorted(entry for entry in self.root.iterdir() if entry.is_dir() and not entry.name.startswith("."))
        if not folders:
            raise ScalingLabError(
                f"classification folder {self.root} has no class sub-folders; expected {self.root}/<class name>/<images>"
            )
        self.class_names: list[str] = [folder.name for folder in folders]
        paths: list[Path] = []
        labels: list[int] = []
        for label, folder in enumerate(folders):
            images = sorted(
                entry
                for entry in folder.iterdir()
                if entry.is_file() and not entry.name.startswith(".") and entry.suffix.lower() in IMAGE_EXTENSIONS
            )
            if not images:
                raise ScalingLabError(
                    f"class folder {folder} holds no images; valid image extensions are {', '.join(IMAGE_EXTENSIONS)}"
                )
            paths += images
            labels += [label] * len(images)
        problems = {path: problem for path in paths if (problem := image_problem(path))}
        if problems and bad_data != "skip":
            named = "; ".join(f"{path} {problem}" for path, problem in list(problems.items())[:5])
            more = f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
            raise ScalingLabError(
                f"{len(problems)} image file(s) in {self.root} cannot be used: {named}{more}. Fix or remove them, "
                "or set task bad_data: skip to train without them"
            )
        labels = [label for path, label in zip(paths, labels) if path not in problems]
        paths = [path for path in paths if path not in problems]
        self.images_skipped = len(problems)
        self.paths = paths
        self.labels = torch.tensor(labels, dtype=torch.int64)
        self.image_store = ImageStore(paths, memory_budget_bytes=memory_budget_bytes)

    def __len__(self) -> int:
        return len(self.paths)

    def __repr__(self) -> str:
        return f"ImageFolderClassification({str(self.root)!r}, images={len(self)}, classes={self.num_classes})"

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


class ClassificationLoader(BatchLoader):
    """Iterates an :class:`ImageFolderClassification` as ``(images, labels)`` on ``device``:
    float32 [B, 3, R, R] normalized images and int64 [B] labels."""

    dataset: ImageFolderClassification

    def _make_batch(self, indices: torch.Tensor, pixel_batch: PixelBatch, draws) -> tuple[torch.Tensor, torch.Tensor]:
        images, _, _ = self._images(pixel_batch, draws)
        return images, self._to_device(self.dataset.labels[indices])
