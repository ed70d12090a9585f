"""Fine-tuning: start a fold from another model's weights (``autoseg train ... --pretrained PATH``).

Every tensor of the pretrained network whose name and shape this network shares is copied; the
segmentation heads are kept new (re-initialised, output biases from this dataset's class
frequencies) when the two datasets' classes differ, even where the shapes would allow the copy. What
was not copied is logged by name. The usual way to make the layers match is ``autoseg
transfer_plans`` (``planners/transfer.py``): the target dataset is planned with the source's plans.
"""
from __future__ import annotations

import logging
from pathlib import Path

from autoseg.errors import UserFacingError

log = logging.getLogger(__name__)


def pretrained_checkpoint(path: str | Path) -> Path:
    """The checkpoint file ``path`` names: a ``.pth`` file, or a fold folder's checkpoint_final."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint_final.pth"
    if not path.is_file():
        raise UserFacingError(f"--pretrained {path}: no such checkpoint; give a fold folder (holding "
                              "checkpoint_final.pth) or a .pth file")
    return path


def load_pretrained(net, path: str | Path, plans, logger: logging.Logger = log) -> dict:
    """Copy the matching weights of the checkpoint at ``path`` into ``net`` (a UNet for ``plans``);
    return {"copied": [...], "heads_new": bool, "not_copied": [...]} and log it to ``logger`` (the
    trainer's, so that it lands in training.log)."""
    from autoseg.plans import load_plans
    from autoseg.training.checkpoint import load_checkpoint

    checkpoint = pretrained_checkpoint(path)
    source = load_checkpoint(checkpoint, "cpu")["network"]
    source_plans_path = checkpoint.parent / "plans.json"
    source_plans = load_plans(source_plans_path) if source_plans_path.is_file() else None
    same_classes = (source_plans is not None and source_plans.labels == plans.labels
                    and source_plans.regions == plans.regions)
    own = net.state_dict()
    copied, not_copied = [], []
    for name, tensor in source.items():
        if name.startswith("heads.") and not same_classes:
            continue
        if name in own and own[name].shape == tensor.shape:
            own[name] = tensor.to(own[name].dtype)
            copied.append(name)
        elif name in own:
            not_copied.append(f"{name} (shape {tuple(tensor.shape)} there, {tuple(own[name].shape)} here)")
        else:
            not_copied.append(f"{name} (not in this network)")
    not_copied += [f"{name} (not in the pretrained network)" for name in own
                   if name not in source and not name.startswith("heads.")]
    if not copied:
        raise UserFacingError(f"--pretrained {checkpoint}: its network shares no layer with this one (e.g. "
                              f"{not_copied[:2]}); plan this dataset with the pretrained model's plans first: "
                              "autoseg transfer_plans --source-dataset A --target-dataset B")
    net.load_state_dict(own)
    logger.info("pretrained weights from %s: %d of %d tensors copied; segmentation heads %s", checkpoint,
                len(copied), len(own), "copied (same classes)" if same_classes else "new (the classes differ)")
    if not_copied:
        logger.warning("not copied from %s (%d): %s", checkpoint, len(not_copied), "; ".join(not_copied))
    return {"copied": copied, "heads_new": not same_classes, "not_copied": not_copied}
