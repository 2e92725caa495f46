"""Tiny DaTaSeg for CPU runs: narrow BatchNorm ResNet (16..128 channels), 64-d pixel decoder with 2 deformable
encoder layers, 3 masked-attention decoder layers (one round over the 3 levels), 16 queries, 64-d hidden width.

``train_vocabularies`` are the text embeddings (MiniLM, 384-d, with the metadata synonyms) of the training
datasets' class names; the classifier starts with the first dataset's vocabulary and is given each test dataset's
by the engine (``dataloader.vocabulary`` must name the same encoder).
"""

from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec

from projects.DaTaSeg.dataseg import (
    DaTaSeg,
    DaTaSegCriterion,
    DaTaSegMatcher,
    MaskedAttentionDecoder,
    MSDeformAttnPixelDecoder,
    build_small_resnet,
    dataset_vocabularies,
    first_vocabulary_embeddings,
)
from unidet2.modeling.text_classifier import TextEmbeddingClassifier

HIDDEN_DIM = 64
WIDTHS = (16, 32, 64, 128)

model = L(DaTaSeg)(
    backbone=L(build_small_resnet)(stem_channels=16, widths=WIDTHS, blocks_per_stage=(1, 1, 1, 1), norm="BN"),
    pixel_decoder=L(MSDeformAttnPixelDecoder)(
        input_shape={f"res{k + 2}": L(ShapeSpec)(channels=w, stride=2 ** (k + 2)) for k, w in enumerate(WIDTHS)},
        hidden_dim=HIDDEN_DIM,
        mask_dim=HIDDEN_DIM,
        num_encoder_layers=2,
        ffn_dim=2 * HIDDEN_DIM,
        num_heads=4,
        num_points=4,
        transformer_in_features=("res3", "res4", "res5"),
        norm="GN",
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
        num_queries=16,
        num_heads=4,
        ffn_dim=2 * HIDDEN_DIM,
        num_layers=3,
        num_feature_levels=3,
    ),
    criterion=L(DaTaSegCriterion)(
        matcher=L(DaTaSegMatcher)(
            class_weight=2.0, mask_weight=5.0, dice_weight=5.0, projection_weight=5.0, num_points=1024
        ),
        class_weight=2.0,
        mask_weight=5.0,
        dice_weight=5.0,
        projection_weight=5.0,
        no_object_weight=0.1,
        num_points=1024,
        oversample_ratio=3.0,
        importance_sample_ratio=0.75,
        mask_merge="noisy_or",
        background_proposals="merge",
        deep_supervision=True,
    ),
    train_vocabularies=L(dataset_vocabularies)(dataset_names=[], encoder="minilm", prompts=None),
    # BGR; from-scratch BatchNorm backbone: unit-variance inputs
    pixel_mean=[103.53, 116.28, 123.675],
    pixel_std=[57.375, 57.120, 58.395],
    size_divisibility=32,
    dataset_loss_weights=None,
    semantic_on=True,
    panoptic_on=True,
    instance_on=True,
    object_mask_threshold=0.8,
    overlap_threshold=0.8,
    max_detections_per_image=100,
)
