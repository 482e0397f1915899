"""Two-stage OpenDAS training (and the same engine for the baselines and ablations)."""

from .config import (DataConfig, DatasetSpec, ModelSpec, RuntimeConfig, ScheduleConfig, Stage, TrainConfig,
                     TripletConfig, config_from_dict, load_config, stages_for)
from .data import EpochShardSampler, PreparedSegments, prepare_segments
from .evaluate import ZERO_SHOT_TEMPLATE, EvalResult, class_scores, evaluate, zero_shot_encoder
from .losses import hardest_negatives, opendas_text_loss, triplet_loss
from .schedule import lr_scheduler, triplet_weight
from .trainer import FitResult, TrainingDiverged, encode_images, fit, flush_denormal, read_log, resolve_device

__all__ = [
    "DataConfig", "DatasetSpec", "EpochShardSampler", "EvalResult", "FitResult", "ModelSpec", "PreparedSegments",
    "RuntimeConfig", "ScheduleConfig", "Stage", "TrainConfig", "TrainingDiverged", "TripletConfig",
    "ZERO_SHOT_TEMPLATE", "class_scores", "config_from_dict", "encode_images", "evaluate", "fit", "flush_denormal",
    "hardest_negatives", "load_config", "lr_scheduler", "opendas_text_loss", "prepare_segments", "read_log",
    "resolve_device",
    "stages_for", "triplet_loss", "triplet_weight", "zero_shot_encoder",
]
