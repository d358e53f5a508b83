"""sklearn-roll: robust locally linear networks with certified stable gradients.

Train piecewise-linear networks (ReLU, LeakyReLU) with the ROLL loss of Lee,
Alvarez-Melis and Jaakkola (ICLR 2019) through scikit-learn's API, and certify per
sample how large a neighbourhood keeps the input gradient exactly constant.
"""

from .estimators import ROLLClassifier, ROLLRegressor
from .regions import certified_margin, explain

__version__ = "0.1.0"

__all__ = ["ROLLClassifier", "ROLLRegressor", "__version__", "certified_margin", "explain"]
