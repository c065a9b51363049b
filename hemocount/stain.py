"""Romanowsky/H&E stain vectors in optical density, shared by every stain augmentation."""

from __future__ import annotations

import numpy as np

#: Ruifrok-Johnston stain vectors (haematoxylin, eosin, DAB) as unit rows: optical density per R, G, B.
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
RGB_FROM_HED = RGB_FROM_HED / np.linalg.norm(RGB_FROM_HED, axis=1, keepdims=True)
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)
