"""Training: the one loop, resumable state, the stage registry and the supervised stages, `train_stage`."""
from .loop import TrainArgs, evaluate, lr_at, read_metrics, train, train_records
from .run import build_model, load_tokenizer, train_stage
from .stages import STAGES, Stage, register

__all__ = ["TrainArgs", "train", "train_records", "evaluate", "lr_at", "read_metrics", "train_stage", "build_model",
           "load_tokenizer", "STAGES", "Stage", "register"]
