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

from unidet2.modeling.label_assignment_losses import HardLabelLoss, SoftLabelLoss, dataset_class_mask
from unidet2.modeling.similarity import VocabularySimilarity
from unidet2.modeling.text_classifier import TextEmbeddingClassifier

__all__ = ["ScaleDetOutputLayers"]

logger = logging.getLogger(__name__)


class ScaleDetOutputLayers(FastRCNNOutputLayers):
    """Fast R-CNN output layers whose classifier is a :class:`TextEmbeddingClassifier` (no background column).

    ``forward`` returns ``(cosine (R, C), deltas (R, 4))``: the raw cosines are kept because the soft loss
    (Eq. 7) compares them with the label similarities; logits are ``classifier.cosine_to_logits(cosine)``.

    Losses (keys): ``loss_cls`` = hard-label sigmoid BCE (Eq. 6), ``loss_soft`` = λ · soft-label MSE (Eq. 7,
    absent without a soft loss or with λ = 0), ``loss_box_reg`` = detectron2's box regression loss.
    Inference scores are σ(z) over the current vocabulary, followed by class-wise NMS.
    """

    @configurable
    def __init__(
        self,
        input_shape: ShapeSpec,
        *,
        box2box_transform,
        classifier: TextEmbeddingClassifier,
        hard_loss: HardLabelLoss,
        soft_loss: SoftLabelLoss | None = None,
        label_similarity: VocabularySimilarity | None = None,
        dataset_columns: Sequence[Sequence[int]] | None = None,
        num_classes: int | None = None,
        **fast_rcnn_options,
    ):
        """
        Args:
            input_shape: shape of the box-head output (flattened to D_in = classifier.input_dim).
            box2box_transform: detectron2 ``Box2BoxTransform``.
            classifier: text classifier over the unified training label space (C classes, background="none").
            hard_loss: Eq. (6) with its normalisation and negatives.
            soft_loss: Eq. (7) with its weight λ, input and GT handling; None = no soft loss.
            label_similarity: Ŝ of the vocabulary (derived from the embeddings, or a given matrix); default a
                derived, row-min-max Ŝ. Used only by the soft loss.
            dataset_columns: per training dataset, its column indices in the unified label space (needed by
                ``hard_loss.negatives="partitioned"``).
            num_classes: optional; must equal ``classifier.num_classes`` when given.
            fast_rcnn_options: ``cls_agnostic_bbox_reg`` (default True), ``test_score_thresh``,
                ``test_nms_thresh``, ``test_topk_per_image``, ``smooth_l1_beta``, ``box_reg_loss_type``,
                ``loss_weight`` of :class:`FastRCNNOutputLayers` (``loss_weight`` may also hold "loss_soft").
        """
        if not isinstance(classifier, TextEmbeddingClassifier) or classifier.has_background:
            raise TypeError(f"classifier must be a TextEmbeddingClassifier with background='none', got {classifier}")
        if num_classes is not None and num_classes != classifier.num_classes:
            raise ValueError(f"num_classes={num_classes} but the classifier's vocabulary has {classifier.num_classes}")
        if hard_loss.negatives == "partitioned" and dataset_columns is None:
            raise ValueError("hard_loss negatives='partitioned' needs dataset_columns")
        fast_rcnn_options.setdefault("cls_agnostic_bbox_reg", True)
        super().__init__(input_shape, box2box_transform=box2box_transform, num_classes=classifier.num_classes,
                         **fast_rcnn_options)
        input_size = input_shape.channels * (input_shape.width or 1) * (input_shape.height or 1)
        if classifier.input_dim != input_size:
            raise ValueError(f"classifier.input_dim={classifier.input_dim} but the box head outputs {input_size}")
        self.cls_score = classifier  # replaces the parent's (C + 1)-way linear layer
        self.hard_loss = hard_loss
        self.soft_loss = soft_loss if soft_loss is not None and soft_loss.weight > 0 else None
        # Ŝ of the current vocabulary; derived from the embeddings, it follows a vocabulary change (fine-tuning
        # on a new label space), a given matrix does not (see VocabularySimilarity).
        self.label_similarity = label_similarity if label_similarity is not None else VocabularySimilarity()
        mask = dataset_class_mask(dataset_columns, classifier.num_classes) if dataset_columns is not None else None
        self.register_buffer("dataset_class_mask", mask, persistent=False)

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

    def _dataset_mask(self, proposals: list[Instances], num_rows: int) -> torch.Tensor | None:
        """(R, C) bool: the columns of each proposal's source dataset (partitioned negatives only)."""
        if self.hard_loss.negatives != "partitioned":
            return None
        if not all(p.has("dataset_source") for p in proposals):
            raise ValueError(
                "partitioned negatives but proposals carry no 'dataset_source': the inputs need a "
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
            "loss_cls": self.hard_loss(
                logits,
                gt_classes,
                embeddings=self.cls_score.embeddings,
                dataset_mask=self._dataset_mask(proposals, logits.shape[0]),
            ),
            "loss_box_reg": self.box_reg_loss(proposal_boxes, gt_boxes, proposal_deltas, gt_classes),
        }
        if self.soft_loss is not None:
            losses["loss_soft"] = self.soft_loss(cosine, logits, gt_classes, self.similarity)
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
