"""Tiny Co-DINO with text-embedding classifiers on three synthetic upstream sets in one concatenated label space
(20 labels): ``co_deformable_detr_text_synthetic.py`` (data, label space, ScaleDet's hard (QFL form here) and soft
label losses, text classifiers in the auxiliary heads) on the Co-DINO base. Every DINO classifier is a text
classifier: the decoder layers', the encoder proposals' (C-way, as DINO), and the denoising queries' label encoder
projects the same embeddings, so ``set_vocabulary`` changes all of them. Build the label space and its embeddings
as that config's docstring says, then

    python tools/train_net.py --config-file projects/CoDETR/configs/co_dino_text_synthetic.py
"""

import copy

from detectron2.config import LazyCall as L

from unidet2.modeling.detr import ContrastiveDenoising

from .co_deformable_detr_text_synthetic import (
    dataloader,
    dataset_registration,
    label_space,
    lr_multiplier,
    optimizer,
    train,
)
from .co_deformable_detr_text_synthetic import model as _text_model
from .models.co_dino_tiny import model

model.num_classes = None
model.class_embed.classifier = copy.deepcopy(_text_model.class_embed.classifier)
model.enc_class_embed = copy.deepcopy(_text_model.class_embed.classifier)
for head, text_head in zip(model.aux_heads, _text_model.aux_heads):
    head.classifier = copy.deepcopy(text_head.classifier)
model.criterion.classification_loss.soft_loss_weight = 1.0
model.criterion.label_similarity = copy.deepcopy(_text_model.criterion.label_similarity)
model.criterion.dataset_columns = copy.deepcopy(_text_model.criterion.dataset_columns)
model.criterion.partitioned_negatives = False
model.denoising = L(ContrastiveDenoising)(
    d_model="${..transformer.d_model}", text_embeddings="${label_space.embeddings_file}", num_dn_queries=100,
    label_noise=0.5, box_noise=1.0,
)
train["output_dir"] = "./output/co_dino_text_synthetic"

__all__ = ["dataloader", "dataset_registration", "label_space", "lr_multiplier", "model", "optimizer", "train"]
