"""A small U-Net for segmentation (MONAI's ``UNet``), sized for a CPU: fitted with Dice + cross-entropy, seeded
augmentation applied to image and mask together, and early stopping on the validation Dice.

Images are (n, h, w) float32 in [0, 1]; masks (n, h, w) uint8 class indices. ``predict_proba`` gives (n, k, h, w)
class probabilities; ``predict`` the arg-max masks.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["UNetSegmenter", "dice_per_image"]


def dice_per_image(predicted: np.ndarray, truth: np.ndarray, label: int) -> np.ndarray:
    """Dice of class ``label`` per image, (n,): 2|P and G| / (|P| + |G|); 1.0 where both are empty (rightly none)."""
    p = (predicted == label).reshape(len(predicted), -1)
    g = (truth == label).reshape(len(truth), -1)
    both = (p & g).sum(axis=1)
    total = p.sum(axis=1) + g.sum(axis=1)
    return np.where(total == 0, 1.0, 2.0 * both / np.maximum(total, 1))


@dataclass
class UNetSegmenter:
    """MONAI's 2-D ``UNet`` with ``channels`` per level (strides of 2 between them)."""

    classes: int = 2
    channels: tuple[int, ...] = (8, 16, 32)
    learning_rate: float = 3e-3
    max_epochs: int = 40
    patience: int = 8
    batch_size: int = 16
    seed: int = 0
    threads: int | None = None
    on_epoch: Callable[[int, dict[str, float]], None] | None = field(default=None, repr=False)
    history_: list[dict[str, float]] = field(default_factory=list, repr=False)
    network_: Any = field(default=None, repr=False)

    def _network(self) -> Any:
        from monai.networks.nets import UNet

        strides = tuple(2 for _ in self.channels[1:])
        return UNet(
            spatial_dims=2, in_channels=1, out_channels=self.classes, channels=self.channels, strides=strides,
            num_res_units=1,
        )  # fmt: skip

    def fit(
        self, images: np.ndarray, masks: np.ndarray, val_images: np.ndarray, val_masks: np.ndarray
    ) -> UNetSegmenter:
        """Fit on (images, masks); keep the weights of the epoch with the best validation Dice of the last class."""
        import torch
        from monai.losses import DiceCELoss
        from monai.transforms import Compose, RandFlipd, RandRotate90d

        torch.manual_seed(self.seed)
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        rng = np.random.default_rng(self.seed)
        augment = Compose([
            RandFlipd(keys=["image", "label"], prob=0.5, spatial_axis=1),
            RandRotate90d(keys=["image", "label"], prob=0.5, max_k=3),
        ])  # fmt: skip
        augment.set_random_state(seed=self.seed)
        network = self._network()
        optimiser = torch.optim.Adam(network.parameters(), lr=self.learning_rate)
        loss = DiceCELoss(to_onehot_y=True, softmax=True)
        best, best_state, waited = -1.0, copy.deepcopy(network.state_dict()), 0
        self.history_ = []
        for epoch in range(1, self.max_epochs + 1):
            began = time.perf_counter()
            network.train()
            order = rng.permutation(len(images))
            losses = []
            for start in range(0, len(order), self.batch_size):
                batch = order[start : start + self.batch_size]
                pairs = [augment({"image": images[i][None], "label": masks[i][None]}) for i in batch]
                x = torch.as_tensor(np.stack([np.asarray(p["image"]) for p in pairs]), dtype=torch.float32)
                y = torch.as_tensor(np.stack([np.asarray(p["label"]) for p in pairs]), dtype=torch.long)
                optimiser.zero_grad()
                value = loss(network(x), y)
                value.backward()
                optimiser.step()
                losses.append(float(value.detach()))
            self.network_ = network
            val_dice = float(dice_per_image(self.predict(val_images), val_masks, self.classes - 1).mean())
            row = {"epoch": float(epoch), "loss": float(np.mean(losses)), "val_dice": val_dice,
                   "seconds": time.perf_counter() - began}  # fmt: skip
            self.history_.append(row)
            if self.on_epoch is not None:
                self.on_epoch(epoch, row)
            if val_dice > best + 1e-6:
                best, best_state, waited = val_dice, copy.deepcopy(network.state_dict()), 0
            else:
                waited += 1
                if waited >= self.patience:
                    break
        network.load_state_dict(best_state)
        self.network_ = network
        return self

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        import torch

        self.network_.eval()
        out = []
        with torch.no_grad():
            for start in range(0, len(images), 64):
                x = torch.from_numpy(np.array(images[start : start + 64][:, None], dtype=np.float32))
                out.append(torch.softmax(self.network_(x), dim=1).numpy())
        return np.concatenate(out) if out else np.empty((0, self.classes, *images.shape[1:]), np.float32)

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self.predict_proba(images).argmax(axis=1).astype(np.uint8)

    def state(self) -> dict[str, Any]:
        """What reloads it: its settings and its weights (for ``torch.save``)."""
        return {"classes": self.classes, "channels": list(self.channels), "weights": self.network_.state_dict()}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> UNetSegmenter:
        model = cls(classes=int(state["classes"]), channels=tuple(state["channels"]))
        network = model._network()
        network.load_state_dict(state["weights"])
        model.network_ = network
        return model
