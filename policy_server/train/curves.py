"""Learning curves as TensorBoard event files, and read back as series for reports.

`CurveWriter` writes scalars (loss terms, mean Q, Lagrange multipliers, held-out OPE) under
`--tensorboard DIR` from rank 0 only; `tensorboard --logdir DIR` shows them live. A resumed run
opens its writer with `purge_step` at the checkpoint's step, so the steps the killed run logged
after its last checkpoint are superseded, not doubled. `read_curves` turns the event files into
`{tag: [(step, value), ...]}` for the demo report (lab) to draw.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["CurveWriter", "read_curves"]


class CurveWriter:
    """A TensorBoard SummaryWriter that is a no-op without a directory (and on ranks other than 0).

    An fsspec URL (s3://, gs://) is written to a local directory and copied there by `sync` (at
    each checkpoint and at the end), so a killed pod's curves survive up to its last checkpoint.
    """

    def __init__(self, log_dir: str | None, purge_step: int | None = None) -> None:
        self._writer: Any = None
        self._remote: str | None = None
        self._local: str | None = None
        if not log_dir:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise ImportError(f"--tensorboard needs tensorboard: pip install 'policy-rollouts[train]' ({exc})") \
                from None
        if "://" in log_dir and not log_dir.startswith("file://"):
            self._remote, self._local = log_dir.rstrip("/"), tempfile.mkdtemp(prefix="policy-curves-")
        self._writer = SummaryWriter(log_dir=self._local or log_dir.removeprefix("file://"),
                                     purge_step=purge_step or None)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self._writer is not None:
            for tag, value in values.items():
                self._writer.add_scalar(tag, float(value), global_step=step)

    def sync(self) -> None:
        """Copy the event files to the remote directory (nothing to do for a local one)."""
        if self._writer is None or self._remote is None or self._local is None:
            return
        import fsspec

        self._writer.flush()
        fs, root = fsspec.core.url_to_fs(self._remote)
        fs.makedirs(root, exist_ok=True)
        for path in Path(self._local).iterdir():
            fs.put_file(str(path), f"{root}/{path.name}")

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self.sync()
            if self._local is not None:
                shutil.rmtree(self._local, ignore_errors=True)
            self._writer = None


def read_curves(log_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series under `log_dir`, by tag, sorted by step, one value per step (the newest written)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    merged: dict[str, dict[int, tuple[float, float]]] = {}
    for events in sorted(Path(log_dir).glob("**/events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            series = merged.setdefault(tag, {})
            for e in acc.Scalars(tag):
                if e.step not in series or series[e.step][0] <= e.wall_time:
                    series[e.step] = (e.wall_time, e.value)
    return {tag: [(step, v) for step, (_, v) in sorted(s.items())] for tag, s in sorted(merged.items())}
