"""ScaleDet project (Chen et al., CVPR 2023): multi-dataset detection in a unified semantic label space."""
