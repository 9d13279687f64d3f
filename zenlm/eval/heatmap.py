"""A grid of accuracies (rows x columns, each 0-1 or None) drawn as a PNG heat map, each cell's value written in it.

matplotlib is imported here, when a heat map is drawn, and only through its object API with the Agg
canvas (no display, no pyplot state); without matplotlib, draw_heatmap raises ImportError and the
caller decides what to do. Red is 0, green is 1; a cell with no value is grey and marked "n/a".
"""

from __future__ import annotations

from pathlib import Path

DPI = 100
COLORMAP = "RdYlGn"


def figure_size(columns: int, rows: int, title: str = "") -> tuple[float, float]:
    """The figure's (width, height) in inches: room for the labels, the colour bar, every cell and the title."""
    widest = max((len(line) for line in title.splitlines()), default=0)
    return max(5.0, 2.4 + 1.0 * columns, 1.0 + 0.075 * widest), max(3.2, 1.6 + 0.5 * rows)


def draw_heatmap(values: list[list[float | None]], xlabels: list[str], ylabels: list[str], title: str,
                 xlabel: str, ylabel: str, path: Path) -> Path:
    """Write the PNG: values[row][column] coloured from 0 (red) to 1 (green), the first row at the top."""
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if len(values) != len(ylabels) or any(len(row) != len(xlabels) for row in values):
        raise ValueError(f"a {len(ylabels)}x{len(xlabels)} grid needs as many values, got "
                         f"{[len(row) for row in values]}")
    data = np.ma.masked_invalid(np.array([[np.nan if v is None else v for v in row] for row in values], float))
    cmap = colormaps[COLORMAP].with_extremes(bad="#d0d0d0")
    fig = Figure(figsize=figure_size(len(xlabels), len(ylabels), title), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(data, cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(xlabels)), xlabels)
    ax.set_yticks(range(len(ylabels)), ylabels)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    for i, row in enumerate(values):
        for j, v in enumerate(row):
            if v is None:
                ax.text(j, i, "n/a", ha="center", va="center", color="#555555")
                continue
            r, g, b, _ = cmap(v)
            ink = "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", color=ink, fontsize=11)
    fig.colorbar(image, ax=ax, label="accuracy", fraction=0.05)
    path = Path(path)
    fig.savefig(path, dpi=DPI)
    return path
