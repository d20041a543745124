"""conveyor: an MLOps assembly line for biomedical image classification."""

__version__ = "0.1.0"
__all__ = ["__version__"]
