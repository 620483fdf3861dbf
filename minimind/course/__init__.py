"""The course: the recipe each chapter runs, the papermill runner, the report card, plots, model anatomy."""
from .recipe import data_paths, ensure_stage, sample_callback
from .report import record, runs_dir

__all__ = ["data_paths", "ensure_stage", "sample_callback", "record", "runs_dir"]
