"""Learn the predictor from recorded outcomes (extra ``[train]``: torch and transformers).

`train` fine-tunes a Hugging Face sequence-regression model (all-MiniLM-L6-v2 by default),
calibrates it on held-out rows and writes a checkpoint that `LocalPredictor` loads and a vLLM
pooling server serves as is. torch is imported only when training starts.
"""

from roi_agents.train.examples import Example, load_examples
from roi_agents.train.metrics import Quality
from roi_agents.train.pipeline import TrainConfig, TrainReport, default_base, train

__all__ = [
    "Example",
    "Quality",
    "TrainConfig",
    "TrainReport",
    "default_base",
    "load_examples",
    "train",
]
