"""Training: run config, dataset and model registries, the training loop, sweeps."""

from .config import RunConfig
from .data import DATASETS, build_dataset
from .models import MODELS, create_model

__all__ = ["RunConfig", "DATASETS", "MODELS", "build_dataset", "create_model"]
