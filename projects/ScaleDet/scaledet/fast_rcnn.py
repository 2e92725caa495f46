"""ScaleDet box predictor: text-embedding classification over the unified label space, class-agnostic
box regression."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec, cat
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers, _log_classification_stats
from detectron2.structures import Instances

from unidet2.modeling.similarity import VocabularySimilarity
from unidet2.modeling.text_classifier import EmbeddingsLike, TextEmbeddingClassifier

from .losses import (
    HARD_LOSS_NORMALIZATIONS,
    SOFT_LOSS_NORMALIZATIONS,
    dataset_class_mask,
    hard_label_loss,
    soft_label_loss,
)

__all__ = ["ScaleDetOutputLayers"]

logger = logging.getLogger(__name__)

_SOFT_LOSS_INPUTS = ("cosine", "sigmoid")


class ScaleDetOutputLayers(FastRCNNOutputLayers):
    """Fast R-CNN output layers whose classifier is a :class:`TextEmbeddingClassifier` (no background column).

    ``forward`` returns ``(cosine (R, C), deltas (R, 4))``: the raw cosines are kept because the soft loss
    (Eq. 7) compares them with the label similarities; logits are ``classifier.cosine_to_logits(cosine)``.

    Losses (keys): ``loss_cls`` = hard-label sigmoid BCE (Eq. 6), ``loss_soft`` = λ · soft-label MSE (Eq. 7,
    absent when λ = 0), ``loss_box_reg`` = detectron2's box regression loss.
    Inference scores are σ(z) over the current vocabulary, followed by class-wise NMS.
    """

    @configurable
    def __init__(
        self,
        input_shape: ShapeSpec,
        *,
        box2box_transform,
        classifier: TextEmbeddingClassifier,
        num_classes: int | None = None,
        similarity: EmbeddingsLike | None = None,
        similarity_normalization: str = "minmax_row",
        similarity_symmetrize: bool = False,
        similarity_temperature: float = 0.05,
        similarity_topk: int | None = None,
        similarity_threshold: float | None = None,
        soft_loss_weight: float = 1.0,
        soft_loss_input: str = "cosine",
        soft_loss_exclude_gt: bool = True,
        soft_loss_norm: str = "num_fg",
        hard_loss_norm: str = "mean_classes",
        partitioned_negatives: bool = False,
        dataset_columns: Sequence[Sequence[int]] | None = None,
        cls_agnostic_bbox_reg: bool = True,
        test_score_thresh: float = 0.02,
        test_nms_thresh: float = 0.5,
        test_topk_per_image: int = 100,
        smooth_l1_beta: float = 0.0,
        box_reg_loss_type: str = "smooth_l1",
        loss_weight: float | dict[str, float] = 1.0,
    ):
        """
        Args:
            input_shape: shape of the box-head output (flattened to D_in = classifier.input_dim).
            box2box_transform: detectron2 ``Box2BoxTransform``.
            classifier: text classifier over the unified training label space (C classes, background="none").
            num_classes: optional; must equal ``classifier.num_classes`` when given.
            similarity: the normalised (C, C) label-similarity matrix Ŝ (array, tensor or ``.npy`` path, e.g.
                written from ``UnifiedLabelSpace.similarity``), used as is; None = computed here from the
                classifier's embeddings with :func:`unidet2.data.label_space.label_similarity` and the
                ``similarity_*`` options below (ignored when ``similarity`` is given).
            similarity_normalization: "minmax_row" (default: per-row min-max to [0, 1]), "minmax_global",
                "softmax_row" or "none" (raw cosine clamped to [0, 1]).
            similarity_symmetrize: average Ŝ with its transpose (default False: the rows are exactly the
                per-row normalisation of the spec's reading).
            similarity_temperature: temperature of "softmax_row".
            similarity_topk: keep, per row, the label itself and its k most similar labels (None = all).
            similarity_threshold: zero off-diagonal entries of Ŝ below it (None = keep all).
            soft_loss_weight: λ of Eq. (7); 0 disables the soft loss.
            soft_loss_input: "cosine" (raw c_ij vs Ŝ, default) or "sigmoid" (σ(z_ij) vs Ŝ).
            soft_loss_exclude_gt: leave the GT label's own entry out of Eq. (7).
            soft_loss_norm: "num_fg" or "num_proposals" (see :func:`soft_label_loss`).
            hard_loss_norm: "mean_classes" or "sum_classes" (see :func:`hard_label_loss`).
            partitioned_negatives: restrict Eq. (6) to the columns of each proposal's source dataset
                (UniDet-style ablation); needs ``dataset_columns`` and a ``dataset_source`` proposal field.
            dataset_columns: per training dataset, its column indices in the unified label space.
            cls_agnostic_bbox_reg, test_*, smooth_l1_beta, box_reg_loss_type, loss_weight: as in
                :class:`FastRCNNOutputLayers` (``loss_weight`` may also hold "loss_soft").
        """
        if not isinstance(classifier, TextEmbeddingClassifier):
            raise TypeError(f"classifier must be a TextEmbeddingClassifier, got {type(classifier)}")
        if classifier.has_background:
            raise ValueError(
                "ScaleDet scores labels with independent sigmoids: use a classifier with background='none'"
            )
        if num_classes is not None and num_classes != classifier.num_classes:
            raise ValueError(
                f"num_classes={num_classes} but the classifier's vocabulary has {classifier.num_classes} classes"
            )
        if hard_loss_norm not in HARD_LOSS_NORMALIZATIONS:
            raise ValueError(f"hard_loss_norm must be one of {HARD_LOSS_NORMALIZATIONS}, got {hard_loss_norm!r}")
        if soft_loss_norm not in SOFT_LOSS_NORMALIZATIONS:
            raise ValueError(f"soft_loss_norm must be one of {SOFT_LOSS_NORMALIZATIONS}, got {soft_loss_norm!r}")
        if soft_loss_input not in _SOFT_LOSS_INPUTS:
            raise ValueError(f"soft_loss_input must be one of {_SOFT_LOSS_INPUTS}, got {soft_loss_input!r}")
        if soft_loss_weight < 0:
            raise ValueError(f"soft_loss_weight must be >= 0, got {soft_loss_weight}")
        if partitioned_negatives and dataset_columns is None:
            raise ValueError("partitioned_negatives=True needs dataset_columns")
        num_classes = classifier.num_classes
        super().__init__(
            input_shape,
            box2box_transform=box2box_transform,
            num_classes=num_classes,
            test_score_thresh=test_score_thresh,
            test_nms_thresh=test_nms_thresh,
            test_topk_per_image=test_topk_per_image,
            cls_agnostic_bbox_reg=cls_agnostic_bbox_reg,
            smooth_l1_beta=smooth_l1_beta,
            box_reg_loss_type=box_reg_loss_type,
            loss_weight=loss_weight,
        )
        input_size = input_shape.channels * (input_shape.width or 1) * (input_shape.height or 1)
        if classifier.input_dim != input_size:
            raise ValueError(f"classifier.input_dim={classifier.input_dim} but the box head outputs {input_size}")
        # Replace the parent's (C + 1)-way linear layer: classification is by text embeddings only.
        self.cls_score = classifier

        # Ŝ of the current vocabulary; derived from the embeddings, it follows a vocabulary change (fine-tuning
        # on a new label space), a given matrix does not (see VocabularySimilarity).
        self.label_similarity = VocabularySimilarity(
            classifier,
            similarity,
            normalization=similarity_normalization,
            temperature=similarity_temperature,
            symmetrize=similarity_symmetrize,
            topk=similarity_topk,
            threshold=similarity_threshold,
        )
        if dataset_columns is not None:
            self.register_buffer(
                "dataset_class_mask", dataset_class_mask(dataset_columns, num_classes), persistent=False
            )
        else:
            self.dataset_class_mask = None

        self.soft_loss_weight = float(soft_loss_weight)
        self.soft_loss_input = soft_loss_input
        self.soft_loss_exclude_gt = bool(soft_loss_exclude_gt)
        self.soft_loss_norm = soft_loss_norm
        self.hard_loss_norm = hard_loss_norm
        self.partitioned_negatives = bool(partitioned_negatives)

    @property
    def similarity(self) -> torch.Tensor:
        """Ŝ (C, C) of the classifier's current vocabulary."""
        return self.label_similarity(self.cls_score)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            x: (R, D_in) or (R, ...) per-region features.

        Returns:
            cosine: (R, C) cosines between projected region features and the class embeddings.
            deltas: (R, 4) class-agnostic (or (R, 4C) class-specific) box deltas.
        """
        if x.dim() > 2:
            x = torch.flatten(x, start_dim=1)
        return self.cls_score.forward_cosine(x), self.bbox_pred(x)

    def _class_mask(self, proposals: list[Instances], num_rows: int) -> torch.Tensor | None:
        if not self.partitioned_negatives:
            return None
        if not all(p.has("dataset_source") for p in proposals):
            raise ValueError(
                "partitioned_negatives=True but proposals carry no 'dataset_source': the inputs need a "
                "'dataset_source' entry and the model must be ScaleDetRCNN with ScaleDet ROI heads"
            )
        if self.dataset_class_mask.shape[1] != self.num_classes:
            raise ValueError(
                f"dataset_columns describe {self.dataset_class_mask.shape[1]} classes but the vocabulary has "
                f"{self.num_classes}; partitioned negatives need the training vocabulary"
            )
        sources = cat([p.dataset_source for p in proposals], dim=0) if proposals else torch.empty(0)
        sources = sources.to(device=self.dataset_class_mask.device, dtype=torch.long)
        if sources.numel() != num_rows:
            raise ValueError(f"{sources.numel()} dataset sources for {num_rows} proposals")
        if sources.numel() and not (int(sources.min()) >= 0 and int(sources.max()) < len(self.dataset_class_mask)):
            raise ValueError(
                f"dataset_source {sources.unique().tolist()} outside the {len(self.dataset_class_mask)} "
                "datasets of dataset_columns"
            )
        return self.dataset_class_mask[sources]

    def losses(self, predictions, proposals: list[Instances]) -> dict[str, torch.Tensor]:
        """
        Args:
            predictions: ``(cosine (R, C), deltas)`` from :meth:`forward`.
            proposals: per-image Instances with ``proposal_boxes``, ``gt_classes`` (in [0, C],
                C = background), ``gt_boxes`` and, for partitioned negatives, ``dataset_source`` (R_i,).

        Returns:
            dict with "loss_cls", "loss_box_reg" and (when λ > 0) "loss_soft".
        """
        cosine, proposal_deltas = predictions
        cosine = cosine.float()  # losses in fp32 under AMP: logits reach 1/tau = 50 and Eq. 7 squares differences
        gt_classes = (
            cat([p.gt_classes for p in proposals], dim=0)
            if len(proposals)
            else torch.empty(0, dtype=torch.long, device=cosine.device)
        )
        logits = self.cls_score.cosine_to_logits(cosine)
        # detectron2's accuracy stats expect a background column; for sigmoid scores a proposal is predicted
        # background when no class logit exceeds 0 (probability 0.5), i.e. a constant 0 background logit.
        _log_classification_stats(torch.cat([logits, logits.new_zeros((logits.shape[0], 1))], dim=1), gt_classes)

        if len(proposals):
            proposal_boxes = cat([p.proposal_boxes.tensor for p in proposals], dim=0)
            assert not proposal_boxes.requires_grad, "Proposals should not require gradients!"
            # Background-only images have no gt_boxes; their value is unused by box_reg_loss.
            gt_boxes = cat([(p.gt_boxes if p.has("gt_boxes") else p.proposal_boxes).tensor for p in proposals], dim=0)
        else:
            proposal_boxes = gt_boxes = torch.empty((0, 4), device=proposal_deltas.device)

        losses = {
            "loss_cls": hard_label_loss(
                logits,
                gt_classes,
                class_mask=self._class_mask(proposals, logits.shape[0]),
                normalization=self.hard_loss_norm,
            ),
            "loss_box_reg": self.box_reg_loss(proposal_boxes, gt_boxes, proposal_deltas, gt_classes),
        }
        if self.soft_loss_weight > 0:
            soft_inputs = cosine if self.soft_loss_input == "cosine" else logits.sigmoid()
            losses["loss_soft"] = self.soft_loss_weight * soft_label_loss(
                soft_inputs,
                gt_classes,
                self.similarity,
                exclude_gt=self.soft_loss_exclude_gt,
                normalization=self.soft_loss_norm,
            )
        return {k: v * self.loss_weight.get(k, 1.0) for k, v in losses.items()}

    def predict_probs(self, predictions, proposals: list[Instances]) -> list[torch.Tensor]:
        """
        Returns:
            list of (R_i, C + 1) tensors: σ(z) for the C classes of the current vocabulary and a constant 0
            "background" column, so that detectron2's ``fast_rcnn_inference`` (which drops the last column)
            and the cascade's score averaging work unchanged.
        """
        cosine, _ = predictions
        probs = self.cls_score.cosine_to_logits(cosine).sigmoid()
        probs = torch.cat([probs, probs.new_zeros((probs.shape[0], 1))], dim=1)
        return probs.split([len(p) for p in proposals], dim=0)
