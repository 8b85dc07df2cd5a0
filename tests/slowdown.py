"""A Lightning callback for kill tests, kept apart so tests/doubles.py stays light."""

from __future__ import annotations

import time

import lightning as L


class SlowDown(L.Callback):
    """Sleep after every training step, so a test can kill a run mid-way."""

    def __init__(self, seconds: float = 0.3) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, *args, **kwargs) -> None:
        time.sleep(self.seconds)
