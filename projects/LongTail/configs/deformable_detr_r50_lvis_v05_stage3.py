"""LVIS v0.5 (1230 classes, the paper's other table): ``deformable_detr_r50_lvis_v1_stage3.py`` on the v0.5 train / val
splits with a 1230-class classifier; everything else, the schedule in epochs included, is the v1 config's."""

from .deformable_detr_r50_lvis_v1_stage3 import dataloader, longtail, lr_multiplier, model, optimizer, train

longtail.update(dataset="lvis_v0.5_train", test_dataset="lvis_v0.5_val")
model.num_classes = 1230
model.teacher.model.num_classes = 1230  # the head expert: the same detector
train["output_dir"] = "./output/longtail_detr_lvis_v05/stage3"
