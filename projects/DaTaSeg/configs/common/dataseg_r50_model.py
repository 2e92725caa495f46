"""DaTaSeg with a ResNet-50 (Mask2Former's R50 setting; README, "Hyper-parameters"): 6-layer deformable
pixel decoder (256-d, FFN 1024), 9-layer masked-attention decoder (100 queries, FFN 2048), 12,544 sampled points,
text classifier of CLIP ViT-L/14 text embeddings (768-d) with a prompt ensemble, temperature 0.07, one shared
learnable background embedding. Inputs are RGB (torchvision R-50 weights).
"""

from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import BasicStem, ResNet

from projects.DaTaSeg.dataseg import (
    DaTaSeg,
    DaTaSegCriterion,
    DaTaSegMatcher,
    MaskedAttentionDecoder,
    MSDeformAttnPixelDecoder,
    dataset_vocabularies,
    first_vocabulary_embeddings,
)
from unidet2.modeling.text_classifier import TextEmbeddingClassifier

HIDDEN_DIM = 256
R50_CHANNELS = {"res2": 256, "res3": 512, "res4": 1024, "res5": 2048}
# Same options at test time (dataloader.vocabulary) so that test vocabularies live in the training space.
TEXT_ENCODER = {"encoder": "openclip", "model": "ViT-L-14", "pretrained": "openai", "prompts": "ensemble"}

model = L(DaTaSeg)(
    backbone=L(ResNet)(
        stem=L(BasicStem)(in_channels=3, out_channels=64, norm="FrozenBN"),
        stages=L(ResNet.make_default_stages)(depth=50, stride_in_1x1=False, norm="FrozenBN"),
        out_features=["res2", "res3", "res4", "res5"],
        freeze_at=0,
    ),
    pixel_decoder=L(MSDeformAttnPixelDecoder)(
        input_shape={
            name: L(ShapeSpec)(channels=channels, stride=2 ** (k + 2))
            for k, (name, channels) in enumerate(R50_CHANNELS.items())
        },
        hidden_dim=HIDDEN_DIM,
        mask_dim=HIDDEN_DIM,
        num_encoder_layers=6,
        ffn_dim=1024,
        num_heads=8,
        num_points=4,
        transformer_in_features=("res3", "res4", "res5"),
        norm="GN",
        xavier_init=True,
    ),
    transformer_decoder=L(MaskedAttentionDecoder)(
        in_channels=HIDDEN_DIM,
        classifier=L(TextEmbeddingClassifier)(
            input_dim=HIDDEN_DIM,
            embeddings=L(first_vocabulary_embeddings)(vocabularies="${model.train_vocabularies}"),
            temperature=0.07,
            background="learnable",
        ),
        hidden_dim=HIDDEN_DIM,
        mask_dim=HIDDEN_DIM,
        num_queries=100,
        num_heads=8,
        ffn_dim=2048,
        num_layers=9,
        num_feature_levels=3,
        xavier_init=True,
    ),
    criterion=L(DaTaSegCriterion)(
        matcher=L(DaTaSegMatcher)(
            class_weight=2.0, mask_weight=5.0, dice_weight=5.0, projection_weight=5.0, num_points=12544
        ),
        class_weight=2.0,
        mask_weight=5.0,
        dice_weight=5.0,
        projection_weight=5.0,
        no_object_weight=0.1,
        num_points=12544,
        oversample_ratio=3.0,
        importance_sample_ratio=0.75,
        mask_merge="noisy_or",
        mask_weighting="none",
        background_proposals="merge",
        deep_supervision=True,
    ),
    train_vocabularies=L(dataset_vocabularies)(dataset_names=[], **TEXT_ENCODER),
    pixel_mean=[123.675, 116.280, 103.530],
    pixel_std=[58.395, 57.120, 57.375],
    size_divisibility=32,
    dataset_loss_weights=None,
    semantic_on=True,
    panoptic_on=True,
    instance_on=True,
    object_mask_threshold=0.8,
    overlap_threshold=0.8,
    max_detections_per_image=100,
    instance_thing_filter="after_topk",
)
