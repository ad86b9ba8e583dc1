"""scaling-lab: architecture search and model-scaling research on EfficientNet/EfficientDet-style detectors."""

__version__ = "0.1.0"
