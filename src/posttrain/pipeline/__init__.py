"""Staged pipelines (``posttrain pipeline FILE``): SFT -> DPO -> RL and friends as one
resumable job with an evaluation after every stage. ``spec`` reads the file, ``resolve`` checks
and builds each stage, ``runner`` runs them, ``summary`` makes the before/after table."""

from posttrain.pipeline.resolve import load_pipeline
from posttrain.pipeline.runner import run_pipeline

__all__ = ["load_pipeline", "run_pipeline"]
