"""Sweep figures: a heatmap per layer and position, and one per layer and head."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image
import pandas as pd

from abstraction.report import draw_head_heatmap, draw_heatmap


def _cells() -> pd.DataFrame:
    rows = [
        {
            "layer": layer,
            "position": "last",
            "component": "residual",
            "head": None,
            "val_iia": 0.5 + layer / 100,
        }
        for layer in range(0, 30, 3)
    ]
    rows += [
        {
            "layer": layer,
            "position": "last",
            "component": "head",
            "head": head,
            "val_iia": 0.5 + head / 20,
        }
        for layer in (15, 18)
        for head in range(9)
    ]
    return pd.DataFrame(rows)


def test_a_one_column_heatmap_is_wide_enough_for_its_title(tmp_path: Path) -> None:
    title = "validation IIA (best over components; – not tried); chosen: layer 21, position last"
    out = draw_heatmap(_cells(), tmp_path / "sweep.png", title=title)
    height, width = matplotlib.image.imread(out).shape[:2]
    assert width >= 4.5 * 120 - 1  # a one-column grid still gets a readable width
    assert height > 2.5 * 120 - 1


def test_heads_get_their_own_layer_by_head_figure(tmp_path: Path) -> None:
    out = draw_head_heatmap(_cells(), tmp_path / "heads.png")
    assert out is not None and out.stat().st_size > 1000
    residual_only = _cells()[lambda c: c["component"] == "residual"]
    assert draw_head_heatmap(residual_only, tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()
