"""Per-epoch metrics: metrics.csv + metrics.jsonl + TensorBoard scalars, and a paper-style error-curve PNG.

Only rank 0 writes (the caller passes enabled=False elsewhere). On resume, rows after the resumed epoch (written
by the interrupted run after its last checkpoint) are dropped so the files match an uninterrupted run.
"""
import csv
import json
import math
import os
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from ..io.outputs import save_figure_atomic, write_text_atomic

CSV_NAME = "metrics.csv"
JSONL_NAME = "metrics.jsonl"
CURVES_NAME = "curves.png"


class MetricsLogger:
    """log(row) appends one row (a dict; the first row fixes the CSV columns, `columns` first if given)."""

    def __init__(self, folder: os.PathLike, *, enabled: bool = True, tensorboard: bool = True,
                 columns: Sequence[str] = (), index_key: str = "epoch"):
        self.folder = Path(folder)
        self.enabled = enabled
        self.columns = list(columns)
        self.index_key = index_key
        self.rows: List[Dict] = []
        self._tb = None
        if not enabled:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(self.folder / "tensorboard"))
            except ImportError:  # tensorboard is optional
                self._tb = None

    def resume(self, last_index: int) -> None:
        """Keep only rows with index <= last_index (read back from metrics.jsonl) and rewrite both files."""
        if not self.enabled:
            return
        path = self.folder / JSONL_NAME
        rows = []
        if path.is_file():
            with open(path, "r", encoding="utf-8") as handle:
                for line in handle:
                    line = line.strip()
                    if not line:
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:  # a line torn by a kill
                        continue
                    if row.get(self.index_key, math.inf) <= last_index:
                        rows.append(row)
        self.rows = rows
        # Every column the kept rows have, in their order: the next row alone (an evaluation row, say) would
        # otherwise fix the CSV's columns and drop the loss columns of the rows before it.
        for row in rows:
            self.columns += [k for k in row if k not in self.columns]
        self._rewrite()

    def log(self, row: Dict, *, step: Optional[int] = None) -> None:
        if not self.enabled:
            return
        row = {k: _plain(v) for k, v in row.items()}
        self.rows.append(row)
        if not self.columns:
            self.columns = list(row)
        else:
            self.columns += [k for k in row if k not in self.columns]
        self._rewrite()
        if self._tb is not None:
            index = row.get(self.index_key, len(self.rows)) if step is None else step
            for key, value in row.items():
                if key != self.index_key and isinstance(value, (int, float)) and value is not None:
                    self._tb.add_scalar(key, value, index)
            self._tb.flush()

    def _rewrite(self) -> None:
        # Rewriting the whole (small) files each epoch keeps the column set consistent when new keys appear.
        columns = self.columns or sorted({k for r in self.rows for k in r})
        write_text_atomic(self.folder / CSV_NAME, _csv_text(self.rows, columns))
        write_text_atomic(self.folder / JSONL_NAME, "".join(json.dumps(r) + "\n" for r in self.rows))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _plain(value):
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float):
        return round(value, 6) if math.isfinite(value) else None
    return value


def _csv_text(rows: List[Dict], columns: List[str]) -> str:
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    return buffer.getvalue()


def plot_panels(path: os.PathLike, panels: Sequence[Callable], *, title: str = "", dpi: int = 110,
                figsize: Tuple[float, float] = (10, 4)) -> Path:
    """One PNG of side-by-side panels: panels[i](ax) draws on the i-th matplotlib Axes (left to right).

    The figure gets `title` as its suptitle and is written atomically (hidden temp file next to `path`, then
    rename), so a reader never sees a half-written PNG. Shared by the classification and detection curves.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=figsize, squeeze=False)
    for draw, ax in zip(panels, axes[0]):
        draw(ax)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    try:
        return save_figure_atomic(fig, Path(path), dpi=dpi)
    finally:
        plt.close(fig)


def plot_error_curves(rows: List[Dict], path: os.PathLike, *, title: str = "", x_key: str = "epoch",
                      x_label: str = "epoch") -> Optional[Path]:
    """Paper-style plot (He et al. 2015, Fig. 1/4): train error (thin) and val error (bold) in %, plus train loss.

    rows need train_top1 / val_top1 in percent; returns the PNG path, or None when there is nothing to draw.
    """
    rows = [r for r in rows if r.get(x_key) is not None]
    if not rows:
        return None
    x = [r[x_key] for r in rows]

    def series(key):
        return [(100.0 - r[key]) if r.get(key) is not None else math.nan for r in rows]

    def draw_error(ax_err):
        ax_err.plot(x, series("train_top1"), "--", linewidth=1.2, color="tab:blue", label="train error")
        if any(r.get("val_top1") is not None for r in rows):
            ax_err.plot(x, series("val_top1"), "-", linewidth=2.2, color="tab:blue", label="val error (top-1)")
            best = min(series("val_top1"))
            ax_err.axhline(best, color="gray", linewidth=0.6, linestyle=":")
            ax_err.text(x[0], best, f" best {best:.2f}%", va="bottom", fontsize=8, color="gray")
        ax_err.set_xlabel(x_label)
        ax_err.set_ylabel("error (%)")
        ax_err.grid(alpha=0.3)
        ax_err.legend()

    def draw_loss(ax_loss):
        ax_loss.plot(x, [r.get("train_loss", math.nan) for r in rows], "-", color="tab:red", label="train loss")
        if any(r.get("val_loss") is not None for r in rows):
            ax_loss.plot(x, [r.get("val_loss") if r.get("val_loss") is not None else math.nan for r in rows], "-",
                         color="tab:green", label="val loss")
        ax_loss.set_xlabel(x_label)
        ax_loss.set_ylabel("loss")
        ax_loss.grid(alpha=0.3)
        ax_loss.legend()

    return plot_panels(path, [draw_error, draw_loss], title=title, dpi=110)
