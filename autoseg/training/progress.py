"""Training history: one log line per epoch and ``progress.png``."""
from __future__ import annotations

import os
from pathlib import Path


def format_epoch(h: dict, epoch: int) -> str:
    dice = " ".join(f"{d:.4f}" for d in h["pseudo_dice"][epoch])
    return (f"epoch {epoch:4d}  train_loss {h['train_loss'][epoch]:.4f}  val_loss {h['val_loss'][epoch]:.4f}  "
            f"pseudo_dice [{dice}]  ema {h['ema_dice'][epoch]:.4f}  lr {h['lr'][epoch]:.5f}  "
            f"time {h['epoch_time'][epoch]:.1f}s" + _data_wait(h, epoch) + _grad_norm(h, epoch))


def _data_wait(h: dict, epoch: int) -> str:
    """The share of the epoch's training iterations spent waiting for augmented batches."""
    waits = h.get("data_wait", [])
    return f"  data wait {100 * waits[epoch]:.0f}%" if epoch < len(waits) else ""


def _grad_norm(h: dict, epoch: int) -> str:
    """The median gradient norm of the epoch's steps (before clipping) and the share clipped."""
    norms, clipped = h.get("grad_norm", []), h.get("clipped", [])
    if epoch >= len(norms) or epoch >= len(clipped):
        return ""
    return f"  grad norm {norms[epoch]:.2f} (clipped {100 * clipped[epoch]:.0f}%)"


def plot_progress(h: dict, path: str | Path) -> None:
    """Loss, pseudo-Dice (per class and EMA), learning rate and epoch time against epochs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = list(range(len(h["train_loss"])))
    fig, axes = plt.subplots(3, 1, figsize=(9, 10), sharex=True)
    axes[0].plot(epochs, h["train_loss"], label="train loss")
    axes[0].plot(epochs, h["val_loss"], label="val loss")
    ax2 = axes[0].twinx()
    per_class = list(zip(*h["pseudo_dice"])) if h["pseudo_dice"] else []
    for k, values in enumerate(per_class, start=1):
        ax2.plot(epochs, values, ":", label=f"pseudo Dice class {k}")
    ax2.plot(epochs, h["ema_dice"], "g-", label="pseudo Dice (EMA)")
    ax2.set_ylim(0, 1)
    axes[0].legend(loc="upper left")
    ax2.legend(loc="lower right")
    axes[1].plot(epochs, h["lr"])
    axes[1].set_ylabel("learning rate")
    axes[2].plot(epochs, h["epoch_time"])
    axes[2].set_ylabel("epoch time (s)")
    axes[2].set_xlabel("epoch")
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.png")
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    os.replace(tmp, path)
