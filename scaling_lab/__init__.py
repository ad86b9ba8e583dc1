"""scaling-lab: architecture search and model-scaling research on EfficientNet/EfficientDet-style detectors."""

__version__ = "0.1.0"

from scaling_lab import presets  # noqa: E402,F401 - registers the named specs that spec files use
