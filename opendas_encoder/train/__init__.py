"""Two-stage OpenDAS training (and the same engine for the baselines and ablations)."""

from .config import (DataConfig, DatasetSpec, ModelSpec, RuntimeConfig, ScheduleConfig, Stage, TrainConfig,
                     TripletConfig, config_from_dict, load_config, stages_for)
from .data import PreparedSegments, SegmentTensorDataset, prepare_segments
from .evaluate import ZERO_SHOT_TEMPLATE, EvalResult, class_scores, evaluate, zero_shot_encoder
from .losses import hardest_negatives, opendas_text_loss, triplet_loss
from .schedule import epoch_lr, triplet_weight
from .trainer import FitResult, TrainingDiverged, encode_images, fit, read_log, resolve_device

__all__ = [
    "DataConfig", "DatasetSpec", "EvalResult", "FitResult", "ModelSpec", "PreparedSegments", "RuntimeConfig",
    "ScheduleConfig", "SegmentTensorDataset", "Stage", "TrainConfig", "TrainingDiverged", "TripletConfig",
    "ZERO_SHOT_TEMPLATE", "class_scores", "config_from_dict", "encode_images", "epoch_lr", "evaluate", "fit",
    "hardest_negatives", "load_config", "opendas_text_loss", "prepare_segments", "read_log", "resolve_device",
    "stages_for", "triplet_loss", "triplet_weight", "zero_shot_encoder",
]
