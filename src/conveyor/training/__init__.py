"""Training: the candidate grid, evaluation with intervals, naive baselines, the registration gate.

Submodules are imported where used (``conveyor.training.train`` pulls in MLflow and scikit-learn).
"""

__all__ = ["baselines", "evaluate", "train"]
