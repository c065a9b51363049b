"""How close the stain-segmentation WBC box comes to human boxes: TXL-PBC's 500 annotated PBC fields
(same lab, scanner and stain as ``pbc_wbc``), IoU with the annotated WBC nearest the centre.

    HEMOCOUNT_DATA=../shared/data python benchmarks/stain_box_classif.py
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from hemocount.classify.data import pbc_cells
from hemocount.classify.stain_box import box_iou, central_cell_box
from hemocount.datasets.sources import data_root
from hemocount.io import read_image


def main() -> None:
    """Print overall and per-class IoU statistics."""
    ious: dict[str, list[float]] = defaultdict(list)
    fallbacks = 0
    for c in pbc_cells(data_root()):
        box, found = central_cell_box(read_image(c.path)[:, :, ::-1])
        fallbacks += not found
        ious[c.label].append(box_iou(box, c.box))
    every = np.concatenate([np.array(v) for v in ious.values()])
    print(f"n={len(every)} fallback={fallbacks} median IoU {np.median(every):.3f} mean {every.mean():.3f} "
          f">=0.7 {np.mean(every >= 0.7):.3f} <0.5 {np.mean(every < 0.5):.3f}")
    for label, v in sorted(ious.items()):
        print(f"  {label:<11} median IoU {np.median(v):.3f}  >=0.7 {np.mean(np.array(v) >= 0.7):.3f}")


if __name__ == "__main__":
    main()
