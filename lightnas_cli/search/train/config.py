"""Config schema of `lightnas train` runs (`method: train`). Every key is documented here; the
shared sections (run, data, train, checkpoint, export) are `BaseConfig`'s.

A train run's config is self-contained: `source` holds the architecture record and the config
of the method that derived it, so the run resumes and exports without its source run."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from lightnas_cli.config.schema import BaseConfig, ModelSection, setting

SOURCE_KINDS = ("run", "architecture", "zoo")
INITS = ("scratch", "search")


@dataclass
class TrainModelConfig(ModelSection):
    # The network's base model: a zoo model (source.kind zoo), else the architecture's base
    # model (informational; the network comes from the architecture).
    name: str = ""
    # Constructor options of a zoo model (classes and input channels come from the data).
    options: Dict[str, Any] = field(default_factory=dict)


@dataclass
class SourceConfig:
    # What is trained: run (a search run's derived architecture), architecture (an
    # architecture JSON file), zoo (a zoo model as it is). Filled in by `lightnas train`.
    kind: str = setting("zoo", choices=SOURCE_KINDS)
    # The run folder, architecture file or zoo model the user named.
    reference: Optional[str] = None
    # The source run's epoch whose derived architecture (and, with init: search, weights) is
    # used; null for a zoo model.
    epoch: Optional[int] = setting(None, ge=1, le=10 ** 6)
    # SHA-256 of the architecture file read (kind run or architecture).
    sha256: Optional[str] = None
    # The run folder holding the search weights (init: search); null when there is none.
    run: Optional[str] = None
    # The architecture record itself (Architecture JSON).
    architecture: Dict[str, Any] = field(default_factory=dict)
    # The resolved config of the method that derived it (what builds its plain network).
    method_config: Dict[str, Any] = field(default_factory=dict)


@dataclass
class DistillConfig:
    # Knowledge distillation (Hinton et al. 2015): an export folder (exported_models/epoch-N/
    # inference_only) or a run (its final export) whose outputs the network learns from;
    # null = off.
    teacher: Optional[str] = None
    # Softening temperature T of both softmaxes (the KL term is scaled by T²).
    temperature: float = setting(4.0, gt=0, le=100)
    # w in loss = (1 - w)·cross-entropy + w·T²·KL(teacher ‖ student).
    weight: float = setting(0.5, ge=0, le=1)


@dataclass
class TrainRunConfig(BaseConfig):
    method: str = "train"
    model: TrainModelConfig = field(default_factory=TrainModelConfig)  # type: ignore[assignment]
    source: SourceConfig = field(default_factory=SourceConfig)
    # scratch: fresh random weights (seeded) | search: the search's weights of that epoch (ENAS
    # shared weights, PIT's surviving weights, ...), then trained further.
    init: str = setting("scratch", choices=INITS)
    # ε of label smoothing on the cross-entropy (0 = off).
    label_smoothing: float = setting(0.0, ge=0, lt=1)
    distill: DistillConfig = field(default_factory=DistillConfig)
