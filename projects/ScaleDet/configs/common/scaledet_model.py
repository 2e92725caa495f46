"""ScaleDet model for LazyConfig: R50-FPN + Cascade R-CNN heads (default) whose box predictors classify with
frozen text embeddings of the unified label space. Every ScaleDet hyper-parameter lives in the top-level
``scaledet`` node (one override changes all cascade stages), e.g. ``scaledet.soft_loss_weight=0.5``.

Tags as in projects/ScaleDet/README.md: [R] the paper's reading, [I] our default where the paper gives no value,
[M] chosen by a measurement reported there.
"""

from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.modeling.backbone import FPN, BasicStem, ResNet
from detectron2.modeling.backbone.fpn import LastLevelMaxPool
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.proposal_generator import RPN, StandardRPNHead
from detectron2.modeling.roi_heads import FastRCNNConvFCHead

from projects.ScaleDet.scaledet import (
    ScaleDetCascadeROIHeads,
    ScaleDetOutputLayers,
    ScaleDetRCNN,
    ScaleDetStandardROIHeads,
)
from unidet2.modeling import TextEmbeddingClassifier, VocabularySimilarity
from unidet2.modeling.label_assignment_losses import HardLabelLoss, SoftLabelLoss

scaledet = {
    # (C, D) float32 text embeddings of the unified label space, row = unified id (tools/build_text_embeddings.py).
    # Its sidecar json records the prompt templates, which the test-time vocabularies reuse (dataloader.vocabulary).
    "embeddings_file": "???",
    # Normalised (C, C) similarity Ŝ (.npy); None = derived from the embeddings with the similarity_* options
    # (a file written by tools/build_text_embeddings.py --similarity must record the same options).
    "similarity_file": None,
    # Per training dataset (dataset_source order), its unified column ids; needed by hard_loss_negatives=
    # "partitioned" and by gt_classes_space="dataset". None when neither is used.
    "dataset_columns": None,
    # "unified": the mapper already maps gt_classes to unified ids (unidet2 MultiDatasetMapper with a label_map);
    # "dataset": gt_classes are dataset-local (detectron2 DatasetMapper) and mapped with dataset_columns.
    "gt_classes_space": "unified",
    "temperature": 0.02,  # tau [I]: Detic's scale 50
    "use_bias": False,  # the paper's logits have no bias [R]
    "bias_prior_prob": 0.01,
    # Eq. 6. Defaults chosen by the ablation in the README ("Choices settled by evidence").
    "hard_loss_norm": "sum_classes",  # per-class sum (Detic) [M]; "mean_classes" = the paper's 1/|L| [R]
    "hard_loss_negatives": "all",  # "all" [R] | "partitioned" (UniDet) | "skip_duplicates" (near-duplicate GT names)
    "duplicate_threshold": 0.95,  # cosine above which a label is a near-duplicate of the GT ("skip_duplicates")
    # Eq. 7
    "soft_loss_weight": 1.0,  # lambda [I]; 0 disables the soft loss
    "soft_loss_input": "cosine",  # Eq. 7 compares raw cosines with Ŝ [R]
    "soft_loss_exclude_gt": False,  # the whole row s_i, as Eq. 7 is written [R]
    "soft_loss_norm": "num_fg",  # mean over foreground proposals [I]
    "similarity_normalization": "minmax_row",  # [I]
    "similarity_symmetrize": None,  # None = label_similarity's rule (symmetrised for minmax_row), as the tool
    "similarity_temperature": 0.05,
    "similarity_topk": None,
    "similarity_threshold": None,
    "box_head_dim": 1024,
    "test_score_thresh": 0.02,
    "test_nms_thresh": 0.5,
    "test_topk_per_image": 100,
}


def scaledet_predictor(bbox_reg_weights):
    """LazyCall of one ScaleDet box predictor; its parts (classifier, losses, Ŝ) and every hyper-parameter come
    from the ``scaledet`` node."""
    return L(ScaleDetOutputLayers)(
        input_shape=L(ShapeSpec)(channels="${scaledet.box_head_dim}"),
        box2box_transform=L(Box2BoxTransform)(weights=bbox_reg_weights),
        classifier=L(TextEmbeddingClassifier)(
            input_dim="${scaledet.box_head_dim}",
            embeddings="${scaledet.embeddings_file}",
            temperature="${scaledet.temperature}",
            use_bias="${scaledet.use_bias}",
            bias_prior_prob="${scaledet.bias_prior_prob}",
            background="none",
        ),
        hard_loss=L(HardLabelLoss)(
            normalization="${scaledet.hard_loss_norm}",
            negatives="${scaledet.hard_loss_negatives}",
            duplicate_threshold="${scaledet.duplicate_threshold}",
        ),
        soft_loss=L(SoftLabelLoss)(
            weight="${scaledet.soft_loss_weight}",
            input="${scaledet.soft_loss_input}",
            exclude_gt="${scaledet.soft_loss_exclude_gt}",
            normalization="${scaledet.soft_loss_norm}",
        ),
        label_similarity=L(VocabularySimilarity)(
            similarity="${scaledet.similarity_file}",
            normalization="${scaledet.similarity_normalization}",
            symmetrize="${scaledet.similarity_symmetrize}",
            temperature="${scaledet.similarity_temperature}",
            topk="${scaledet.similarity_topk}",
            threshold="${scaledet.similarity_threshold}",
        ),
        dataset_columns="${scaledet.dataset_columns}",
        cls_agnostic_bbox_reg=True,
        test_score_thresh="${scaledet.test_score_thresh}",
        test_nms_thresh="${scaledet.test_nms_thresh}",
        test_topk_per_image="${scaledet.test_topk_per_image}",
    )


def box_head(in_channels=256, resolution=7):
    return L(FastRCNNConvFCHead)(
        input_shape=ShapeSpec(channels=in_channels, height=resolution, width=resolution),
        conv_dims=[],
        fc_dims=["${scaledet.box_head_dim}", "${scaledet.box_head_dim}"],
    )


def cascade_roi_heads(
    in_features=("p2", "p3", "p4", "p5"), strides=(4, 8, 16, 32), in_channels=256, batch_size_per_image=512
):
    """Cascade R-CNN heads (3 stages, IoU 0.5/0.6/0.7, detectron2's per-stage box weights)."""
    return L(ScaleDetCascadeROIHeads)(
        num_classes=None,  # taken from the text classifier's vocabulary
        batch_size_per_image=batch_size_per_image,
        positive_fraction=0.25,
        box_in_features=list(in_features),
        box_pooler=L(ROIPooler)(
            output_size=7, scales=tuple(1.0 / s for s in strides), sampling_ratio=0, pooler_type="ROIAlignV2"
        ),
        box_heads=[box_head(in_channels) for _ in range(3)],
        box_predictors=[scaledet_predictor((w1, w1, w2, w2)) for (w1, w2) in [(10, 5), (20, 10), (30, 15)]],
        proposal_matchers=[
            L(Matcher)(thresholds=[th], labels=[0, 1], allow_low_quality_matches=False) for th in (0.5, 0.6, 0.7)
        ],
    )


def faster_rcnn_roi_heads(
    in_features=("p2", "p3", "p4", "p5"), strides=(4, 8, 16, 32), in_channels=256, batch_size_per_image=512
):
    """Single-stage Faster R-CNN heads (the option to the cascade), class-agnostic box regression."""
    return L(ScaleDetStandardROIHeads)(
        num_classes=None,
        batch_size_per_image=batch_size_per_image,
        positive_fraction=0.25,
        proposal_matcher=L(Matcher)(thresholds=[0.5], labels=[0, 1], allow_low_quality_matches=False),
        box_in_features=list(in_features),
        box_pooler=L(ROIPooler)(
            output_size=7, scales=tuple(1.0 / s for s in strides), sampling_ratio=0, pooler_type="ROIAlignV2"
        ),
        box_head=box_head(in_channels),
        box_predictor=scaledet_predictor((10, 10, 5, 5)),
    )


model = L(ScaleDetRCNN)(
    backbone=L(FPN)(
        bottom_up=L(ResNet)(
            stem=L(BasicStem)(in_channels=3, out_channels=64, norm="FrozenBN"),
            stages=L(ResNet.make_default_stages)(depth=50, stride_in_1x1=True, norm="FrozenBN"),
            out_features=["res2", "res3", "res4", "res5"],
            freeze_at=2,
        ),
        in_features="${.bottom_up.out_features}",
        out_channels=256,
        top_block=L(LastLevelMaxPool)(),
    ),
    proposal_generator=L(RPN)(
        in_features=["p2", "p3", "p4", "p5", "p6"],
        head=L(StandardRPNHead)(in_channels=256, num_anchors=3),
        anchor_generator=L(DefaultAnchorGenerator)(
            sizes=[[32], [64], [128], [256], [512]],
            aspect_ratios=[0.5, 1.0, 2.0],
            strides=[4, 8, 16, 32, 64],
            offset=0.0,
        ),
        anchor_matcher=L(Matcher)(thresholds=[0.3, 0.7], labels=[0, -1, 1], allow_low_quality_matches=True),
        box2box_transform=L(Box2BoxTransform)(weights=[1.0, 1.0, 1.0, 1.0]),
        batch_size_per_image=256,
        positive_fraction=0.5,
        pre_nms_topk=(2000, 1000),
        post_nms_topk=(1000, 1000),
        nms_thresh=0.7,
    ),
    roi_heads=cascade_roi_heads(),
    gt_classes_space="${scaledet.gt_classes_space}",
    dataset_columns="${scaledet.dataset_columns}",
    pixel_mean=[103.530, 116.280, 123.675],
    pixel_std=[1.0, 1.0, 1.0],
    input_format="BGR",
)
