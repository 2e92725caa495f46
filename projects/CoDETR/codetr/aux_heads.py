"""Co-DETR's auxiliary one-to-many heads, trained on the multi-scale adapter output (training only).

Every auxiliary head is an ``nn.Module`` with

    forward(images: ImageList, features: list[Tensor], gt_instances: list[Instances])
        -> (losses: dict[str, Tensor], targets: AuxTargets)

where ``features`` are the adapter maps (B, C, h_l, w_l) from fine to coarse and ``targets`` is the head's own
one-to-many assignment, which Co-DETR turns into positive decoder queries (see :mod:`.positive_queries`).
Any module with that signature can be listed in ``CoDETR(aux_heads=[...])``. Two are provided, the paper's
defaults:

* :class:`CoATSSHead`: ATSS (1 anchor per location, top-k=9 centre-distance candidates per level,
  IoU >= mean + std and centre inside the GT), focal + GIoU (centerness-weighted) + centerness losses.
* :class:`CoFasterRCNNHead`: detectron2's RPN + a :class:`CoStandardROIHeads` (Faster R-CNN box head) whose
  sampled RoIs (positives IoU >= 0.5, GT boxes appended as proposals) are the assignment.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from detectron2.layers import ShapeSpec
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.proposal_generator import RPN, StandardRPNHead
from detectron2.modeling.roi_heads import FastRCNNConvFCHead, FastRCNNOutputLayers, StandardROIHeads
from detectron2.structures import ImageList, Instances
from torch import nn
from torchvision.ops import box_iou, generalized_box_iou_loss, sigmoid_focal_loss

from unidet2.modeling.text_classifier import TextEmbeddingClassifier

from .criterion import global_normalizer

__all__ = [
    "AuxTargets",
    "CoATSSHead",
    "CoFasterRCNNHead",
    "CoStandardROIHeads",
    "atss_assign",
    "build_box_predictor",
    "build_faster_rcnn_aux_head",
]


@dataclass
class AuxTargets:
    """One-to-many assignment of an auxiliary head, per image (Co-DETR's ``pos_coords``).

    Attributes:
        boxes: per image (N_i, 4) anchors or proposals, absolute XYXY in the (resized, unpadded) image.
        labels: per image (N_i,) int64: a class in [0, C) for positives, C for negatives (-1 = ignored).
        target_boxes: per image (N_i, 4) the assigned GT box, absolute XYXY (meaningless for negatives).
        features: per image (N_i, D) content feature of each entry (adapter feature at the anchor, or the
            pooled RoI feature).
    """

    boxes: list[torch.Tensor]
    labels: list[torch.Tensor]
    target_boxes: list[torch.Tensor]
    features: list[torch.Tensor]

    def __post_init__(self):
        lengths = {len(self.boxes), len(self.labels), len(self.target_boxes), len(self.features)}
        if len(lengths) != 1:
            raise ValueError(f"AuxTargets fields cover different numbers of images: {lengths}")
        for i, (b, lab, t, f) in enumerate(zip(self.boxes, self.labels, self.target_boxes, self.features)):
            if not (len(b) == len(lab) == len(t) == len(f)):
                raise ValueError(f"image {i}: {len(b)} boxes, {len(lab)} labels, {len(t)} targets, {len(f)} features")


def _check_derived_num_classes(head: nn.Module, value: int) -> None:
    # num_classes is read from the head's classifier; set_vocabulary assigns it after swapping the
    # classifier, so only a value that agrees with it is accepted.
    if value != head.num_classes:
        raise AttributeError(f"{type(head).__name__}.num_classes follows its classifier ({head.num_classes}); "
                             f"cannot set it to {value}")


class _Scale(nn.Module):
    def __init__(self, value: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(value)))

    def forward(self, x):
        return x * self.scale


def atss_assign(
    anchors: torch.Tensor, num_anchors_per_level: Sequence[int], gt_boxes: torch.Tensor, topk: int = 9
) -> torch.Tensor:
    """ATSS assignment (Zhang et al., CVPR 2020) of one image.

    Per GT and level, the ``topk`` anchors whose centres are closest to the GT centre are candidates; a
    candidate is positive if its IoU with the GT is >= mean + std of the candidates' IoUs and its centre lies
    inside the GT. An anchor positive for several GTs takes the one with the highest IoU.

    Args:
        anchors: (A, 4) XYXY, levels concatenated in order.
        num_anchors_per_level: anchors of each level (sums to A).
        gt_boxes: (G, 4) XYXY.
        topk: candidates per level and GT.

    Returns:
        (A,) int64: index of the assigned GT, or -1 for negatives.
    """
    num_anchors, num_gt = anchors.shape[0], gt_boxes.shape[0]
    if sum(num_anchors_per_level) != num_anchors:
        raise ValueError(f"num_anchors_per_level {list(num_anchors_per_level)} do not sum to {num_anchors}")
    matched = torch.full((num_anchors,), -1, dtype=torch.int64, device=anchors.device)
    if num_gt == 0 or num_anchors == 0:
        return matched
    ious = box_iou(anchors, gt_boxes)  # (A, G)
    anchor_centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    gt_centres = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2
    distances = torch.cdist(anchor_centres, gt_centres)  # (A, G)
    candidates, start = [], 0
    for count in num_anchors_per_level:
        k = min(topk, count)
        if k > 0:
            candidates.append(distances[start:start + count].topk(k, dim=0, largest=False).indices + start)
        start += count
    candidates = torch.cat(candidates, 0)  # (K, G)
    gt_index = torch.arange(num_gt, device=anchors.device).expand_as(candidates)
    candidate_ious = ious[candidates, gt_index]  # (K, G)
    std = candidate_ious.std(0) if candidates.shape[0] > 1 else torch.zeros_like(candidate_ious[0])
    threshold = candidate_ious.mean(0) + std
    is_positive = candidate_ious >= threshold[None]
    centres = anchor_centres[candidates]  # (K, G, 2)
    gt = gt_boxes[None].expand(candidates.shape[0], -1, -1)
    inside = torch.stack(
        [centres[..., 0] - gt[..., 0], centres[..., 1] - gt[..., 1], gt[..., 2] - centres[..., 0],
         gt[..., 3] - centres[..., 1]], dim=-1,
    ).min(-1).values > 0.01
    is_positive &= inside
    ious_positive = torch.full_like(ious, float("-inf"))
    ious_positive[candidates[is_positive], gt_index[is_positive]] = ious[candidates[is_positive], gt_index[is_positive]]
    best_iou, best_gt = ious_positive.max(1)
    return torch.where(best_iou > float("-inf"), best_gt, matched)


def _centerness_targets(anchors: torch.Tensor, gt_boxes: torch.Tensor) -> torch.Tensor:
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    left_right = torch.stack([centres[:, 0] - gt_boxes[:, 0], gt_boxes[:, 2] - centres[:, 0]], 1)
    top_bottom = torch.stack([centres[:, 1] - gt_boxes[:, 1], gt_boxes[:, 3] - centres[:, 1]], 1)
    return torch.sqrt(
        (left_right.min(1).values / left_right.max(1).values) * (top_bottom.min(1).values / top_bottom.max(1).values)
    )


class CoATSSHead(nn.Module):
    """ATSS head over the adapter levels (mmdet ``ATSSHead`` semantics as configured by Co-DETR).

    Towers of ``stacked_convs`` 3x3 conv + GroupNorm + ReLU (Co-DETR: 1), a classification branch (3x3 conv,
    or a per-pixel :class:`TextEmbeddingClassifier`), a 3x3 box-delta branch with a learned scale per level
    and a 3x3 centerness branch. One square anchor of side ``anchor_scale * stride`` per location.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        strides: Sequence[int],
        num_classes: int | None = None,
        classifier: TextEmbeddingClassifier | None = None,
        stacked_convs: int = 1,
        norm_groups: int = 32,
        anchor_scale: float = 8.0,
        topk: int = 9,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        prior_prob: float = 0.01,
        box_reg_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0),
        loss_weight: dict[str, float] | None = None,
    ):
        """
        Args:
            in_channels: C of the adapter maps.
            strides: stride of each adapter level (e.g. 8, 16, 32, 64, 128).
            num_classes: C for the linear (conv) classifier; ignored with ``classifier``.
            classifier: optional text classifier (input_dim = in_channels, background "none").
            stacked_convs: conv layers per tower.
            norm_groups: GroupNorm groups (must divide in_channels).
            anchor_scale: anchor side in strides (mmdet octave_base_scale).
            topk: ATSS candidates per level.
            focal_alpha, focal_gamma: sigmoid focal loss.
            prior_prob: initial foreground probability (classification bias).
            box_reg_weights: delta weights (10, 10, 5, 5) = mmdet's target stds (0.1, 0.1, 0.2, 0.2).
            loss_weight: base weights {"cls": 1, "giou": 2, "centerness": 1} (before Co-DETR's L * lambda_2).
        """
        super().__init__()
        if classifier is None and num_classes is None:
            raise ValueError("CoATSSHead needs num_classes (linear classifier) or a text classifier")
        if classifier is not None and classifier.has_background:
            raise ValueError("CoATSSHead scores classes with sigmoids: use a classifier with background='none'")
        self.strides = list(strides)
        self.topk, self.focal_alpha, self.focal_gamma = topk, focal_alpha, focal_gamma
        self.loss_weight = {"cls": 1.0, "giou": 2.0, "centerness": 1.0, **(loss_weight or {})}
        self.box2box_transform = Box2BoxTransform(weights=box_reg_weights)
        self.anchor_generator = DefaultAnchorGenerator(
            sizes=[[anchor_scale * s] for s in self.strides], aspect_ratios=[[1.0]], strides=self.strides, offset=0.0
        )

        def tower():
            layers = []
            for _ in range(stacked_convs):
                layers += [nn.Conv2d(in_channels, in_channels, 3, padding=1, bias=False),
                           nn.GroupNorm(norm_groups, in_channels), nn.ReLU(inplace=True)]
            return nn.Sequential(*layers)

        self.cls_tower, self.reg_tower = tower(), tower()
        prior_logit = -math.log((1 - prior_prob) / prior_prob)
        if classifier is None:
            self.cls_logits = nn.Conv2d(in_channels, num_classes, 3, padding=1)
            nn.init.constant_(self.cls_logits.bias, prior_logit)
            self.classifier = None
        else:
            self.cls_logits = None
            self.classifier = classifier
        self.bbox_pred = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.centerness = nn.Conv2d(in_channels, 1, 3, padding=1)
        self.scales = nn.ModuleList(_Scale(1.0) for _ in self.strides)
        for module in [*self.cls_tower, *self.reg_tower, self.bbox_pred, self.centerness]:
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01)
                if module.bias is not None:
                    nn.init.constant_(module.bias, 0.0)
        if self.cls_logits is not None:
            nn.init.normal_(self.cls_logits.weight, std=0.01)

    @property
    def num_classes(self) -> int:
        return self.classifier.num_classes if self.classifier is not None else self.cls_logits.out_channels

    @num_classes.setter
    def num_classes(self, value: int) -> None:
        _check_derived_num_classes(self, value)

    def _classify(self, feature: torch.Tensor) -> torch.Tensor:
        """(B, C_in, h, w) -> (B, h * w, num_classes) logits."""
        if self.classifier is None:
            return self.cls_logits(feature).flatten(2).transpose(1, 2)
        batch = feature.shape[0]
        pixels = feature.flatten(2).transpose(1, 2).reshape(-1, feature.shape[1])
        return self.classifier(pixels).view(batch, -1, self.classifier.num_classes)

    def forward(self, images: ImageList, features: list[torch.Tensor], gt_instances: list[Instances]):
        """See the module docstring. Returns losses {"loss_atss_cls", "loss_atss_giou", "loss_atss_centerness"}
        and the assignment of all anchors of every image."""
        if len(features) != len(self.strides):
            raise ValueError(f"CoATSSHead was built for {len(self.strides)} levels, got {len(features)}")
        logits, deltas, centerness = [], [], []
        for level, feature in enumerate(features):
            cls_feature, reg_feature = self.cls_tower(feature), self.reg_tower(feature)
            logits.append(self._classify(cls_feature))
            deltas.append(self.scales[level](self.bbox_pred(reg_feature)).flatten(2).transpose(1, 2))
            centerness.append(self.centerness(reg_feature).flatten(1))
        logits, deltas, centerness = torch.cat(logits, 1), torch.cat(deltas, 1), torch.cat(centerness, 1)
        anchors_per_level = self.anchor_generator(features)
        anchors = torch.cat([a.tensor for a in anchors_per_level], 0)  # (A, 4), same for every image
        num_per_level = [len(a) for a in anchors_per_level]
        num_classes = logits.shape[-1]

        labels, target_boxes = [], []
        for instances in gt_instances:
            gt = instances.gt_boxes.tensor
            matched = atss_assign(anchors, num_per_level, gt, self.topk)
            positive = matched >= 0
            image_labels = torch.full_like(matched, num_classes)
            image_targets = torch.zeros_like(anchors)
            image_labels[positive] = instances.gt_classes[matched[positive]]
            image_targets[positive] = gt[matched[positive]]
            labels.append(image_labels)
            target_boxes.append(image_targets)
        labels_all = torch.stack(labels)  # (B, A)
        targets_all = torch.stack(target_boxes)
        positive = labels_all < num_classes
        num_pos = global_normalizer(int(positive.sum()), logits.device)

        onehot = F.one_hot(labels_all, num_classes + 1)[..., :num_classes].to(logits.dtype)
        loss_cls = sigmoid_focal_loss(logits, onehot, self.focal_alpha, self.focal_gamma, reduction="sum") / num_pos
        if bool(positive.any()):
            pos_anchors = anchors[None].expand(len(labels), -1, -1)[positive]
            pos_targets = targets_all[positive]
            pos_pred_boxes = self.box2box_transform.apply_deltas(deltas[positive], pos_anchors)
            ctr_targets = _centerness_targets(pos_anchors, pos_targets)
            ctr_norm = global_normalizer(float(ctr_targets.sum()), logits.device)
            loss_giou = (generalized_box_iou_loss(pos_pred_boxes, pos_targets, reduction="none") * ctr_targets).sum()
            loss_giou = loss_giou / ctr_norm
            loss_ctr = F.binary_cross_entropy_with_logits(centerness[positive], ctr_targets, reduction="sum") / num_pos
        else:
            loss_giou = deltas.sum() * 0.0
            loss_ctr = centerness.sum() * 0.0
        losses = {
            "loss_atss_cls": loss_cls * self.loss_weight["cls"],
            "loss_atss_giou": loss_giou * self.loss_weight["giou"],
            "loss_atss_centerness": loss_ctr * self.loss_weight["centerness"],
        }
        # One anchor per location: the query content of an anchor is the adapter feature at its location.
        location_features = torch.cat([f.flatten(2) for f in features], 2).transpose(1, 2)  # (B, A, C)
        targets = AuxTargets(
            boxes=[anchors] * len(labels),
            labels=labels,
            target_boxes=target_boxes,
            features=list(location_features.unbind(0)),
        )
        return losses, targets


class CoStandardROIHeads(StandardROIHeads):
    """Faster R-CNN box head that also returns its sampled RoIs as Co-DETR's assignment (training only)."""

    def forward(self, images, features, proposals, targets=None):
        if not self.training:
            raise RuntimeError("CoStandardROIHeads is an auxiliary training head; Co-DETR infers with DETR queries")
        if targets is None:
            raise ValueError("CoStandardROIHeads needs targets")
        proposals = self.label_and_sample_proposals(proposals, targets)
        box_features = [features[f] for f in self.box_in_features]
        pooled = self.box_pooler(box_features, [p.proposal_boxes for p in proposals])  # (R, C, 7, 7)
        predictions = self.box_predictor(self.box_head(pooled))
        losses = self.box_predictor.losses(predictions, proposals)
        counts = [len(p) for p in proposals]
        targets_out = AuxTargets(
            boxes=[p.proposal_boxes.tensor for p in proposals],
            labels=[p.gt_classes for p in proposals],
            # images without GT have no gt_boxes field; all their RoIs are negatives
            target_boxes=[p.gt_boxes.tensor if p.has("gt_boxes") else torch.zeros_like(p.proposal_boxes.tensor)
                          for p in proposals],
            features=list(pooled.mean(dim=(2, 3)).split(counts)),
        )
        return losses, targets_out


def build_box_predictor(
    input_dim: int,
    *,
    num_classes: int | None = None,
    classifier: TextEmbeddingClassifier | None = None,
    box_reg_loss_type: str = "giou",
    loss_weight: dict[str, float] | None = None,
    box_reg_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0),
) -> FastRCNNOutputLayers:
    """Fast R-CNN predictor: softmax over C + 1 with a linear layer, or with a text classifier whose
    background is the last column (``background="learnable"`` or ``"zero"``); class-agnostic boxes with a
    text classifier (the vocabulary size may change)."""
    if classifier is not None:
        if not classifier.has_background:
            raise ValueError("The Faster R-CNN aux head uses a softmax with background: build the text "
                             "classifier with background='learnable' or 'zero'")
        num_classes = classifier.num_classes
    if num_classes is None:
        raise ValueError("build_box_predictor needs num_classes or a classifier")
    predictor = FastRCNNOutputLayers(
        ShapeSpec(channels=input_dim),
        box2box_transform=Box2BoxTransform(weights=box_reg_weights),
        num_classes=num_classes,
        cls_agnostic_bbox_reg=classifier is not None,
        box_reg_loss_type=box_reg_loss_type,
        loss_weight={"loss_cls": 1.0, "loss_box_reg": 10.0, **(loss_weight or {})},
    )
    if classifier is not None:
        predictor.cls_score = classifier
    return predictor


class CoFasterRCNNHead(nn.Module):
    """RPN + RoI head as one auxiliary head (Co-DETR's ``rpn_head`` + ``roi_head``)."""

    def __init__(self, *, rpn: RPN, roi_heads: CoStandardROIHeads, in_features: Sequence[str]):
        """
        Args:
            rpn: detectron2 RPN whose ``in_features`` are ``in_features``.
            roi_heads: :class:`CoStandardROIHeads` over the same features.
            in_features: names given to the adapter maps, fine to coarse (e.g. "p3".."p7").
        """
        super().__init__()
        self.rpn, self.roi_heads, self.in_features = rpn, roi_heads, list(in_features)

    @property
    def num_classes(self) -> int:
        classifier = self.roi_heads.box_predictor.cls_score
        if isinstance(classifier, TextEmbeddingClassifier):
            return classifier.num_classes
        return self.roi_heads.num_classes

    @num_classes.setter
    def num_classes(self, value: int) -> None:
        _check_derived_num_classes(self, value)

    def forward(self, images: ImageList, features: list[torch.Tensor], gt_instances: list[Instances]):
        if len(features) != len(self.in_features):
            raise ValueError(f"CoFasterRCNNHead expects {len(self.in_features)} levels, got {len(features)}")
        named = dict(zip(self.in_features, features))
        proposals, rpn_losses = self.rpn(images, named, gt_instances)
        roi_losses, targets = self.roi_heads(images, named, proposals, gt_instances)
        return {**rpn_losses, **roi_losses}, targets


def build_faster_rcnn_aux_head(
    *,
    in_channels: int,
    strides: Sequence[int],
    num_classes: int | None = None,
    classifier: TextEmbeddingClassifier | None = None,
    roi_strides: Sequence[int] | None = None,
    finest_scale: float = 112.0,
    fc_dim: int = 1024,
    rpn_batch_size_per_image: int = 256,
    roi_batch_size_per_image: int = 512,
    pre_nms_topk: int = 4000,
    post_nms_topk: int = 1000,
    rpn_loss_weight: float = 1.0,
    roi_loss_weight: dict[str, float] | None = None,
) -> CoFasterRCNNHead:
    """Co-DETR's Faster R-CNN auxiliary head (the official R50 config, README "Hyper-parameters"), detectron2 parts.

    RPN on every adapter level: anchors ``stride * 4 * 2^(i/3)`` (i = 0, 1, 2) x ratios (0.5, 1, 2), IoU 0.7 /
    0.3 with low-quality matches, 256 samples 50 % positive, L1 box loss, train NMS 0.7 keeping
    ``post_nms_topk`` of ``pre_nms_topk`` per level. RoI head on ``roi_strides`` (default: all levels but the
    extra one, as the official config's strides 8-64): RoIAlign 7x7 with mmdet's level mapping
    floor(log2(size / finest_scale)), two ``fc_dim`` FCs, IoU 0.5 / 0.5, 512 samples 25 % positive, GT added as
    proposals, softmax CE + GIoU (weight 10) on decoded class-specific boxes.

    Args:
        in_channels, strides: width and strides of the adapter levels.
        num_classes / classifier: linear softmax classifier over C + 1, or a text classifier with background.
        roi_strides: strides of the levels the RoIs are pooled from (a prefix of ``strides``).
        finest_scale: RoIs smaller than 2 * finest_scale go to the first RoI level.
    """
    names = [f"p{i}" for i in range(len(strides))]
    roi_strides = list(strides[:-1] if roi_strides is None else roi_strides)
    if roi_strides != list(strides[: len(roi_strides)]):
        raise ValueError(f"roi_strides {roi_strides} must be a prefix of the adapter strides {list(strides)}")
    rpn = RPN(
        in_features=names,
        head=StandardRPNHead(in_channels=in_channels, num_anchors=9),
        anchor_generator=DefaultAnchorGenerator(
            sizes=[[s * 4 * 2 ** (i / 3) for i in range(3)] for s in strides],
            aspect_ratios=[[0.5, 1.0, 2.0]],
            strides=list(strides),
            offset=0.0,
        ),
        anchor_matcher=Matcher([0.3, 0.7], [0, -1, 1], allow_low_quality_matches=True),
        box2box_transform=Box2BoxTransform(weights=(1.0, 1.0, 1.0, 1.0)),
        batch_size_per_image=rpn_batch_size_per_image,
        positive_fraction=0.5,
        pre_nms_topk=(pre_nms_topk, pre_nms_topk),
        post_nms_topk=(post_nms_topk, post_nms_topk),
        nms_thresh=0.7,
        smooth_l1_beta=0.0,
        loss_weight=rpn_loss_weight,
    )
    # mmdet maps a RoI of size s to level floor(log2(s / finest_scale)); detectron2 to
    # floor(canonical_level + log2(s / 224)) - log2(stride_0): equal for
    # canonical_level = log2(stride_0 * 224 / finest_scale).
    canonical_level = math.log2(roi_strides[0] * 224.0 / finest_scale)
    if not float(canonical_level).is_integer():
        raise ValueError(f"finest_scale {finest_scale} must be 224 / 2^k for detectron2's level mapping")
    roi_heads = CoStandardROIHeads(
        num_classes=classifier.num_classes if classifier is not None else num_classes,
        batch_size_per_image=roi_batch_size_per_image,
        positive_fraction=0.25,
        proposal_matcher=Matcher([0.5], [0, 1], allow_low_quality_matches=False),
        proposal_append_gt=True,
        box_in_features=names[: len(roi_strides)],
        box_pooler=ROIPooler(
            output_size=7, scales=[1.0 / s for s in roi_strides], sampling_ratio=0, pooler_type="ROIAlignV2",
            canonical_box_size=224, canonical_level=int(canonical_level),
        ),
        box_head=FastRCNNConvFCHead(ShapeSpec(channels=in_channels, height=7, width=7), conv_dims=[],
                                    fc_dims=[fc_dim, fc_dim]),
        box_predictor=build_box_predictor(fc_dim, num_classes=num_classes, classifier=classifier,
                                          loss_weight=roi_loss_weight),
    )
    return CoFasterRCNNHead(rpn=rpn, roi_heads=roi_heads, in_features=names)
