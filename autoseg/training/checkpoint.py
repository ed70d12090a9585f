"""Checkpoints: written atomically, loadable with ``torch.load(weights_only=True)``.

A checkpoint holds only tensors and plain containers: network and optimizer state, the
position in the schedule (epoch, global iteration), the logged history, the best EMA
pseudo-Dice and the resolved training config as a dict. A fold folder holds everything
needed to rebuild the model without any trainer code: ``plans.json``, ``train_config.json``
and the checkpoints.
"""
from __future__ import annotations

import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from autoseg.errors import MissingFileError, UserFacingError
from autoseg.plans import ConfigurationPlan, Plans, load_plans
from autoseg.training.health import refuse_failed
from autoseg.training.network import UNet, build_network
from autoseg.training.train_config import TrainConfig, load_train_config


def save_checkpoint(state: dict, path: str | Path) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"checkpoint {path} not found; train this fold first (autoseg train)")
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserFacingError(f"checkpoint {path} cannot be read ({first}): it is incomplete or damaged (a disk "
                              f"that filled up, a copy cut off). Delete it and train again: 'autoseg train ... "
                              f"--continue' goes on from checkpoint_final where the fold has one, else starts the "
                              f"fold anew") from None


@dataclass
class TrainedModel:
    network: UNet
    plans: Plans
    configuration: ConfigurationPlan
    train_config: TrainConfig
    fold_dir: Path


def load_trained_model(fold_dir: str | Path, checkpoint: str = "checkpoint_final",
                       device: str | torch.device = "cpu") -> TrainedModel:
    """Rebuild a trained network from the files in ``fold_dir`` alone (eval mode, no deep supervision)."""
    fold_dir = Path(fold_dir)
    refuse_failed(fold_dir)
    plans = load_plans(fold_dir / "plans.json")
    cfg = load_train_config(fold_dir / "train_config.json")
    state = load_checkpoint(fold_dir / f"{checkpoint}.pth", device)
    configuration = state["configuration"]
    net = build_network(plans, configuration, deep_supervision=False, in_channels=state.get("in_channels"))
    net.load_state_dict(state["network"])
    net.to(device).eval()
    return TrainedModel(net, plans, plans.configuration(configuration), cfg, fold_dir)
