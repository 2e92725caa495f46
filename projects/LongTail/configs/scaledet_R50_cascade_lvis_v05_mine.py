"""LVIS v0.5 (1230 classes, the paper's other table): ``scaledet_R50_cascade_lvis_v1_mine.py`` on the v0.5 train /
val splits; everything else, the schedule in epochs included, is the v1 config's."""

from .scaledet_R50_cascade_lvis_v1_mine import dataloader, longtail, model, scaledet, train

longtail.update(dataset="lvis_v0.5_train", test_dataset="lvis_v0.5_val")
train["output_dir"] = "./output/longtail_lvis_v05/mine"
