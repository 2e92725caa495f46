"""Co-DETR project (Zong et al., ICCV 2023): Deformable-DETR with collaborative one-to-many auxiliary heads."""
