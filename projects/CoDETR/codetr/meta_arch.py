"""Co-DETR (Zong et al., ICCV 2023) as a detectron2 meta-architecture, on Deformable-DETR or on DINO.

Training objective (README, "Method"):

    L = sum_l [ L_l^dec  +  lambda_1 * sum_k L_{k,l}^dec ]  +  L * lambda_2 * sum_k L_k^enc   (+ DINO's L_l^dn)

* L_l^dec: Hungarian (one-to-one) loss of the main queries at decoder layer l (+ the two-stage encoder proposals);
* L_k^enc: the native loss of auxiliary head k (ATSS, Faster R-CNN, ...) on the multi-scale adapter;
* L_{k,l}^dec: the positive queries built from head k's assignment, decoded by the shared decoder and supervised
  with the head's fixed targets at every layer l;
* L_l^dn (DINO): the contrastive denoising queries' reconstruction loss at every layer.

The model is assembled from parts that the config builds (Mask2Former style): backbone, neck, position embedding,
transformer, the per-layer prediction heads, the initial-query selection, the criterion, and, for Co-DETR, the
auxiliary heads, the adapter and the positive-query head; for DINO, the denoising-query generator. Which parts are
given decides the detector: Deformable-DETR (no aux heads), Co-Deformable-DETR, DINO (DINO queries + denoising),
Co-DINO. Inference runs the one-to-one branch only; :meth:`CoDETR.strip_auxiliary` removes every training-only part,
after which a Co-DETR has exactly its base detector's parameters.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from detectron2.modeling.backbone import Backbone
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, ImageList, Instances
from torch import nn

from unidet2.modeling.detr import (
    ChannelMapper,
    ContrastiveDenoising,
    SinePositionEmbedding,
    batched_soft_nms,
    cxcywh_to_xyxy,
    inverse_sigmoid,
)
from unidet2.modeling.text_classifier import TextEmbeddingClassifier

from .aux_heads import AuxTargets
from .criterion import CoDETRCriterion, global_normalizer
from .positive_queries import (
    AUX_QUERY_MODES,
    PositiveQueryBatch,
    PositiveQueryHead,
    group_attention_mask,
    padding_attention_mask,
)
from .query_heads import MultiScaleAdapter, SelectedQueries, classify
from .transformer import DeformableTransformer, EncoderOutput

__all__ = ["AUX_QUERY_MODES", "CoDETR"]

logger = logging.getLogger(__name__)

# Keyword arguments of the flat constructor before the parts were built by the config: where each went.
_MOVED_KEYS = {
    "num_queries": "query_selection.num_queries",
    "two_stage": "query_selection (TwoStageQueries / LearnedQueries), enc_class_embed and bbox_embed.encoder_head",
    "with_box_refine": "class_embed.shared / bbox_embed.shared (True = no refinement)",
    "mixed_selection": "query_selection.mixed_selection",
    "class_head": "class_embed.classifier",
    "matcher": "criterion.matcher",
    "classification_loss": "criterion.classification_loss",
    "loss_weights": "criterion.weight_dict",
    "lambda_1": "criterion.lambda_1",
    "lambda_2": "criterion.lambda_2",
    "aux_loss_scale": "criterion.aux_loss_scale",
    "similarity": "criterion.label_similarity (VocabularySimilarity(similarity=...))",
    "similarity_normalization": "criterion.label_similarity.normalization",
    "similarity_symmetrize": "criterion.label_similarity.symmetrize",
    "dataset_columns": "criterion.dataset_columns",
    "partitioned_negatives": "criterion.partitioned_negatives",
    "max_positive_queries": "positive_queries.max_queries",
    "min_positive_queries": "positive_queries.min_queries",
    "zero_padding": "positive_queries.zero_padding",
    "aux_query_mode": "positive_queries.mode",
    "with_coord_feat": "positive_queries.with_coord_feat",
    "adapter_norm_groups": "adapter.norm_groups",
}

_TRANSITIONAL_KEYS = ("loss_weights", "two_stage", "with_box_refine", "mixed_selection")

# Attribute names of the parts that only training uses (dropped by strip_auxiliary).
_TRAINING_ONLY = ("aux_heads", "adapter", "positive_queries", "denoising")


class CoDETR(nn.Module):
    """Co-DETR on a Deformable-DETR or DINO base. See the module docstring; tensor shapes in method docstrings."""

    def __init__(
        self,
        *,
        backbone: Backbone,
        neck: ChannelMapper,
        position_embedding: SinePositionEmbedding,
        transformer: DeformableTransformer,
        class_embed: nn.ModuleList,
        bbox_embed: nn.ModuleList,
        query_selection: nn.Module,
        criterion: CoDETRCriterion,
        enc_class_embed: nn.Module | None = None,
        aux_heads: Sequence[nn.Module] = (),
        adapter: MultiScaleAdapter | None = None,
        positive_queries: PositiveQueryHead | None = None,
        denoising: ContrastiveDenoising | None = None,
        num_classes: int | None = None,
        test_topk: int = 100,
        soft_nms_iou: float | None = None,
        pixel_mean: Sequence[float] = (123.675, 116.28, 103.53),
        pixel_std: Sequence[float] = (58.395, 57.12, 57.375),
        size_divisibility: int = 0,
        **unknown,
    ):
        """
        Args:
            backbone, neck, position_embedding, transformer: the feature path (neck levels = transformer levels).
            class_embed: one classifier per decoder layer (linear, or :class:`TextEmbeddingClassifier` without
                background); bbox_embed: one box MLP per decoder layer, plus the encoder proposals' last.
            query_selection: :class:`.query_heads.LearnedQueries`, ``TwoStageQueries`` or ``DINOQueries``.
            criterion: :class:`.criterion.CoDETRCriterion`.
            enc_class_embed: classifier of the two-stage encoder proposals (two-stage selections only).
            aux_heads: K auxiliary heads (empty: the base detector; adapter and positive queries are then unused).
            adapter: the auxiliary heads' input; positive_queries: their positive-query head (K heads).
            denoising: DINO's contrastive denoising queries (needs the DINO decoder).
            num_classes: C of the linear classifiers, checked against them (the config key that data configs and
                fine-tuning set); None with text classifiers.
            test_topk: detections per image (top (query, class) pairs by sigmoid score).
            soft_nms_iou: class-aware linear soft-NMS at this IoU after the top-k (Co-DINO's release: 0.8); None:
                no NMS (Co-Deformable-DETR).
            pixel_mean, pixel_std: normalisation, in the channel order of the input images.
            size_divisibility: pad the batch to a multiple of this (0 = to the largest image).
        """
        transitional = {key: unknown.pop(key) for key in list(unknown) if key in _TRANSITIONAL_KEYS}
        if unknown:
            moved = [f"{key} -> model.{_MOVED_KEYS[key]}" for key in unknown if key in _MOVED_KEYS]
            raise TypeError(f"CoDETR got unknown arguments {sorted(unknown)}"
                            + (f"; these are now set on the parts: {'; '.join(moved)}" if moved else ""))
        super().__init__()
        self.backbone, self.neck, self.transformer = backbone, neck, transformer
        self.position_embedding = position_embedding
        self.class_embed, self.bbox_embed, self.enc_class_embed = class_embed, bbox_embed, enc_class_embed
        self.query_selection, self.criterion = query_selection, criterion
        self.aux_heads = nn.ModuleList(aux_heads)
        # Without auxiliary heads the model is its base detector: the Co-DETR parts would be dead weights.
        self.adapter = adapter if len(self.aux_heads) else None
        self.positive_queries = positive_queries if len(self.aux_heads) else None
        self.denoising = denoising
        self.test_topk, self.soft_nms_iou, self.size_divisibility = test_topk, soft_nms_iou, size_divisibility
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(-1, 1, 1), False)
        self.training_num_classes = self.num_classes
        self._apply_transitional_keys(transitional)
        self._check_parts(num_classes)

    def _apply_transitional_keys(self, keys: dict) -> None:
        """Flat keys of the former constructor that configs outside this project still set: applied to the parts
        (or checked against them) with a warning naming the new key. To be removed once those configs moved."""
        for key, value in keys.items():
            logger.warning("CoDETR(%s=...) is deprecated: set model.%s", key, _MOVED_KEYS[key])
            if key == "loss_weights":
                for criterion in (self.criterion.set_criterion, self.criterion.encoder_criterion):
                    criterion.weight_dict.update(value)
            elif key == "mixed_selection" and value != getattr(self.query_selection, "mixed_selection", value):
                if value:
                    raise ValueError("mixed_selection=True needs query_selection.mixed_selection=True")
                self.query_selection.mixed_selection = False
                del self.query_selection.query_embed
            elif key in ("two_stage", "with_box_refine"):
                actual = self.query_selection.two_stage if key == "two_stage" else self._decoder_box_heads() is not None
                if bool(value) != actual:
                    raise ValueError(f"{key}={value} contradicts the configured parts: set model.{_MOVED_KEYS[key]}")

    def _check_parts(self, num_classes: int | None) -> None:
        """Clear errors for parts that do not fit together."""
        layers, two_stage = self.num_decoder_layers, self.query_selection.two_stage
        if self.neck.num_levels != self.transformer.num_levels:
            raise ValueError(f"neck gives {self.neck.num_levels} levels, "
                             f"transformer expects {self.transformer.num_levels}")
        if 2 * self.position_embedding.num_pos_feats != self.transformer.d_model:
            raise ValueError(f"position_embedding gives 2 x {self.position_embedding.num_pos_feats} channels, "
                             f"the transformer's width is {self.transformer.d_model}")
        if len(self.class_embed) != layers or len(self.bbox_embed) != layers + int(two_stage):
            raise ValueError(f"{layers} decoder layers need {layers} classifiers and {layers + int(two_stage)} box "
                             f"heads, got {len(self.class_embed)} and {len(self.bbox_embed)}")
        if two_stage != (self.enc_class_embed is not None):
            raise ValueError("enc_class_embed is needed by (and only by) a two-stage query selection")
        if num_classes is not None and not self.uses_text_classifier and num_classes != self.num_classes:
            raise ValueError(f"num_classes={num_classes} but the query classifiers have {self.num_classes} classes")
        if self.criterion.soft_loss and not self.uses_text_classifier:
            raise ValueError("The soft label loss needs a text class_head")
        box_query_pos = self.transformer.decoder.ref_point_head is not None
        if box_query_pos == (getattr(self.query_selection, "pos_trans", None) is not None or not two_stage):
            raise ValueError(f"{type(self.query_selection).__name__} does not fit the decoder "
                             f"(box_query_pos={box_query_pos}): use DINOQueries with the DINO decoder")
        if self.denoising is not None and not box_query_pos:
            raise ValueError("denoising queries need the DINO decoder (box_query_pos=True)")
        if self.criterion.dataset_columns is not None:
            self.criterion.class_masks(list(range(len(self.criterion.dataset_columns))), self.num_classes, "cpu")
        if not len(self.aux_heads):
            return
        if self.adapter is None or self.positive_queries is None:
            raise ValueError("auxiliary heads need an adapter and a positive_queries head")
        if self.positive_queries.num_heads != len(self.aux_heads):
            raise ValueError(f"positive_queries is built for {self.positive_queries.num_heads} heads, "
                             f"aux_heads has {len(self.aux_heads)}")
        if self.positive_queries.needs_query_pos == box_query_pos:
            raise ValueError(f"positive-query content {self.positive_queries.content!r} does not fit the decoder "
                             f"(box_query_pos={box_query_pos})")
        for k, head in enumerate(self.aux_heads):
            head_classes = getattr(head, "num_classes", None)
            if head_classes is not None and head_classes != self.num_classes:
                raise ValueError(f"aux head {k} ({type(head).__name__}) has {head_classes} classes, "
                                 f"the query head {self.num_classes}")

    # ------------------------------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def similarity(self) -> torch.Tensor | None:
        """Ŝ (C, C) of the class head's current vocabulary for the soft loss; None without one."""
        similarity = self.criterion.label_similarity
        return similarity(self.class_embed[0]) if similarity is not None else None

    @property
    def uses_text_classifier(self) -> bool:
        return isinstance(self.class_embed[0], TextEmbeddingClassifier)

    @property
    def num_classes(self) -> int:
        """C of the current vocabulary (follows :func:`unidet2.modeling.set_vocabulary`)."""
        head = self.class_embed[0]
        return head.num_classes if isinstance(head, TextEmbeddingClassifier) else head.out_features

    @num_classes.setter
    def num_classes(self, value: int) -> None:
        # Derived from the classifier; set_vocabulary assigns it after swapping the classifiers, so only a
        # value that agrees with them is accepted.
        if value != self.num_classes:
            raise AttributeError(f"num_classes follows the query classifier ({self.num_classes}); "
                                 f"use unidet2.modeling.set_vocabulary to change the vocabulary, not {value}")

    @property
    def num_decoder_layers(self) -> int:
        return self.transformer.decoder.num_layers

    @property
    def num_queries(self) -> int:
        return self.query_selection.num_queries

    @property
    def aux_query_mode(self) -> str:
        return self.positive_queries.mode

    @aux_query_mode.setter
    def aux_query_mode(self, value: str) -> None:
        if value not in AUX_QUERY_MODES:
            raise ValueError(f"aux_query_mode must be one of {AUX_QUERY_MODES}, got {value!r}")
        self.positive_queries.mode = value

    def training_only_modules(self) -> dict[str, nn.Module]:
        """The parts used in training only (aux heads, adapter, positive-query head, denoising label encoder)."""
        parts = {name: getattr(self, name) for name in _TRAINING_ONLY}
        return {name: module for name, module in parts.items() if module is not None and len(list(module.parameters()))}

    def inference_parameter_count(self) -> int:
        """Parameters used at inference (all but :meth:`training_only_modules`)."""
        skip = {id(p) for m in self.training_only_modules().values() for p in m.parameters()}
        return sum(p.numel() for p in self.parameters() if id(p) not in skip)

    def strip_auxiliary(self) -> CoDETR:
        """Delete the training-only parts (in place; returns self): what remains is the inference detector.
        The model can no longer train afterwards."""
        self.aux_heads = nn.ModuleList()
        self.adapter = self.positive_queries = self.denoising = None
        return self

    # -------------------------------------------------------------------------------------------- forward
    def preprocess_image(self, batched_inputs: list[dict]) -> tuple[ImageList, torch.Tensor]:
        """Normalise and pad. Returns the ImageList and the (B, H, W) bool padding mask (True = padding)."""
        images = [(x["image"].to(self.device).float() - self.pixel_mean) / self.pixel_std for x in batched_inputs]
        images = ImageList.from_tensors(images, self.size_divisibility)
        batch, _, height, width = images.tensor.shape
        mask = torch.ones((batch, height, width), dtype=torch.bool, device=self.device)
        for i, (h, w) in enumerate(images.image_sizes):
            mask[i, :h, :w] = False
        return images, mask

    def encode(self, images: ImageList, pad_mask: torch.Tensor) -> EncoderOutput:
        """Backbone, neck and encoder."""
        srcs = self.neck(self.backbone(images.tensor))
        masks = [F.interpolate(pad_mask[None].float(), size=s.shape[-2:])[0].to(torch.bool) for s in srcs]
        pos = [self.position_embedding(m).to(s.dtype) for m, s in zip(masks, srcs)]
        return self.transformer.encode(srcs, masks, pos)

    def _predict(self, hidden: torch.Tensor, references: list[torch.Tensor]):
        """Per-layer class logits (+ cosines) and boxes. hidden: (L, B, Q, C); references: L x (B, Q, 2|4)."""
        logits, cosines, boxes = [], [], []
        for layer in range(hidden.shape[0]):
            layer_logits, layer_cosine = classify(self.class_embed[layer], hidden[layer])
            delta = self.bbox_embed[layer](hidden[layer])
            reference = inverse_sigmoid(references[layer])
            if reference.shape[-1] == 4:
                coords = delta + reference
            else:
                coords = torch.cat([delta[..., :2] + reference, delta[..., 2:]], dim=-1)
            logits.append(layer_logits)
            cosines.append(layer_cosine)
            boxes.append(coords.sigmoid())
        return logits, cosines, boxes

    def _decoder_box_heads(self):
        # Shared box heads (the same module in every slot) mean no iterative refinement.
        heads = self.bbox_embed[: self.num_decoder_layers]
        return None if len(heads) > 1 and heads[0] is heads[1] else heads

    def _decode(self, tgt, query_pos, reference, encoded, mask=None) -> dict:
        hidden, references = self.transformer.decode(tgt, query_pos, reference, encoded, self._decoder_box_heads(),
                                                     mask)
        logits, cosines, boxes = self._predict(hidden, references)
        return {"logits": logits, "cosines": cosines, "boxes": boxes}

    def forward_queries(self, encoded: EncoderOutput, denoising=None) -> dict:
        """One-to-one query branch (with DINO's denoising queries in the same pass when given).

        Returns:
            {"logits": L x (B, Q, C), "cosines": L x ((B, Q, C) or None), "boxes": L x (B, Q, 4) normalised cxcywh;
            with two-stage "enc_logits", "enc_cosines", "enc_boxes"; with denoising "denoising": the same three
            per layer for the N denoising queries}.
        """
        selected: SelectedQueries = self.query_selection(encoded, self.transformer, self.enc_class_embed,
                                                         self.bbox_embed[-1])
        tgt, query_pos, reference, mask = selected.tgt, selected.query_pos, selected.reference, None
        if denoising is not None:
            tgt = torch.cat([denoising.content.to(tgt.dtype), tgt], 1)
            reference = torch.cat([denoising.reference_boxes, reference], 1)
            mask = denoising.attention_mask(selected.tgt.shape[1], self.transformer.num_heads)
        out = self._decode(tgt, query_pos, reference, encoded, mask)
        if denoising is not None:
            size = denoising.num_queries
            out["denoising"] = {key: [None if v is None else v[:, :size] for v in values]
                                for key, values in out.items()}
            out.update({key: [None if v is None else v[:, size:] for v in values] for key, values in out.items()
                        if key != "denoising"})
        out["enc_logits"], out["enc_cosines"], out["enc_boxes"] = selected.enc_logits, selected.enc_cosines, \
            selected.enc_boxes
        return out

    def forward_positive_queries(self, encoded: EncoderOutput, groups: list[PositiveQueryBatch]) -> list[dict]:
        """Decode every head's positive queries with the shared decoder and heads.

        Returns:
            per head {"logits", "cosines", "boxes"} as in :meth:`forward_queries` (Q = that head's M).
        """
        num_heads = self.transformer.num_heads
        embeddings = [self.positive_queries.embed(k, g) for k, g in enumerate(groups)]
        if self.aux_query_mode == "separate" or len(groups) == 1:
            return [self._decode(tgt, query_pos, group.reference_boxes, encoded,
                                 padding_attention_mask(group.valid, num_heads))
                    for (tgt, query_pos), group in zip(embeddings, groups)]
        tgt = torch.cat([e[0] for e in embeddings], 1)
        query_pos = None if embeddings[0][1] is None else torch.cat([e[1] for e in embeddings], 1)
        reference = torch.cat([g.reference_boxes for g in groups], 1)
        mask = group_attention_mask([g.valid for g in groups], num_heads)
        out = self._decode(tgt, query_pos, reference, encoded, mask)
        sizes = [g.num_queries for g in groups]

        def split(values):
            return [None] * len(sizes) if values is None else list(values.split(sizes, dim=1))

        per_key = {key: [split(v) for v in values] for key, values in out.items()}  # key -> layer -> head
        return [{key: [layer[k] for layer in layers] for key, layers in per_key.items()} for k in range(len(groups))]

    def forward(self, batched_inputs: list[dict]):
        """
        Args:
            batched_inputs: detectron2 inputs: "image" (3, H, W), "height", "width", and for training
                "instances" (gt_boxes, gt_classes in this model's label space) and optionally "dataset_source".

        Returns:
            training: dict of losses; inference: list of {"instances": Instances} at the original size.

        Training must run inside a detectron2 ``EventStorage`` (as every detectron2 trainer does): the RPN and
        RoI heads of the Faster R-CNN auxiliary head log their sampling statistics there.
        """
        images, pad_mask = self.preprocess_image(batched_inputs)
        encoded = self.encode(images, pad_mask)
        if not self.training:
            return self.inference(self.forward_queries(encoded), images.image_sizes, batched_inputs)
        if "instances" not in batched_inputs[0]:
            raise ValueError("CoDETR training needs 'instances' in every input dict")
        gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
        self._check_classes(gt_instances)
        denoising = None
        if self.denoising is not None:
            targets = self._normalized_targets(gt_instances, images.image_sizes)
            embeddings = self.class_embed[0].embeddings if self.uses_text_classifier else None
            denoising = self.denoising([t["labels"] for t in targets], [t["boxes"] for t in targets],
                                       self.num_classes, embeddings)
        outputs = self.forward_queries(encoded, denoising)
        outputs["denoising_queries"] = denoising
        return self.losses(outputs, encoded, images, gt_instances, self._class_masks(batched_inputs))

    # --------------------------------------------------------------------------------------------- losses
    def _class_masks(self, batched_inputs: list[dict]) -> torch.Tensor | None:
        if not self.criterion.partitioned_negatives:
            return None
        if self.num_classes != self.training_num_classes:
            raise ValueError("partitioned negatives need the training vocabulary (restore it after set_vocabulary)")
        num_datasets = len(self.criterion.dataset_columns)
        sources = []
        for x in batched_inputs:
            if "dataset_source" not in x:
                raise ValueError(f"{x.get('file_name', '?')}: partitioned_negatives needs 'dataset_source'")
            source = int(x["dataset_source"])
            if not 0 <= source < num_datasets:
                raise ValueError(f"{x.get('file_name', '?')}: dataset_source {source} outside the "
                                 f"{num_datasets} datasets of dataset_columns")
            sources.append(source)
        return self.criterion.class_masks(sources, self.num_classes, self.device)

    def _check_classes(self, gt_instances: list[Instances]) -> None:
        num_classes = self.num_classes
        for instances in gt_instances:
            classes = instances.gt_classes
            if classes.numel() and (int(classes.min()) < 0 or int(classes.max()) >= num_classes):
                raise ValueError(f"gt_classes {classes.unique().tolist()} outside the {num_classes} classes "
                                 "of the query classifier; are the annotations mapped to its label space?")

    @staticmethod
    def _normalized_targets(gt_instances: list[Instances], image_sizes) -> list[dict]:
        targets = []
        for instances, (h, w) in zip(gt_instances, image_sizes):
            scale = torch.tensor([w, h, w, h], dtype=torch.float32, device=instances.gt_boxes.device)
            boxes = instances.gt_boxes.tensor / scale
            targets.append({
                "labels": instances.gt_classes,
                "boxes": torch.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2,
                                      boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], dim=-1),
            })
        return targets

    def losses(self, outputs: dict, encoded: EncoderOutput, images: ImageList, gt_instances: list[Instances],
               class_masks: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Every loss term (keys in the README's "Loss keys")."""
        self._check_classes(gt_instances)
        targets = self._normalized_targets(gt_instances, images.image_sizes)
        num_boxes = global_normalizer(sum(len(t["labels"]) for t in targets), self.device)
        similarity = self.similarity
        losses = self.criterion.query_losses(outputs, targets, num_boxes, similarity, class_masks)
        if outputs.get("denoising_queries") is not None:
            losses.update(self.criterion.fixed_target_losses(outputs["denoising"], outputs["denoising_queries"], "dn",
                                                             similarity=similarity, class_masks=class_masks))
        if len(self.aux_heads):
            losses.update(self._auxiliary_losses(encoded, images, gt_instances, similarity, class_masks))
        return losses

    def _auxiliary_losses(self, encoded, images, gt_instances, similarity, class_masks) -> dict[str, torch.Tensor]:
        losses, groups = {}, []
        adapter = self.adapter(encoded)
        for k, head in enumerate(self.aux_heads):
            head_losses, assignment = head(images, adapter, gt_instances)
            if not isinstance(assignment, AuxTargets):
                raise TypeError(f"aux head {k} ({type(head).__name__}) must return (losses, AuxTargets)")
            losses.update(self.criterion.auxiliary_head_losses(k, head_losses))
            groups.append(self.positive_queries.build(assignment, images.image_sizes, self.num_classes))
        for k, (group, out) in enumerate(zip(groups, self.forward_positive_queries(encoded, groups))):
            losses.update(self.criterion.fixed_target_losses(out, group, f"pos{k}", self.criterion.lambda_1,
                                                             similarity, class_masks))
        return losses

    # ------------------------------------------------------------------------------------------ inference
    def inference(self, outputs: dict, image_sizes, batched_inputs: list[dict]) -> list[dict]:
        """Top ``test_topk`` (query, class) pairs per image by sigmoid score, then (optionally) soft-NMS."""
        logits, boxes = outputs["logits"][-1].float(), outputs["boxes"][-1].float()
        batch, num_queries, num_classes = logits.shape
        scores = logits.sigmoid().flatten(1)
        topk = min(self.test_topk, scores.shape[1])
        top_scores, top_index = scores.topk(topk, dim=1)
        query_index = torch.div(top_index, num_classes, rounding_mode="floor")
        labels = top_index % num_classes
        results = []
        for b, (h, w) in enumerate(image_sizes):
            xyxy = cxcywh_to_xyxy(boxes[b, query_index[b]])
            xyxy = xyxy * torch.tensor([w, h, w, h], dtype=xyxy.dtype, device=xyxy.device)
            image_scores, image_labels = top_scores[b], labels[b]
            if self.soft_nms_iou is not None:
                keep, image_scores = batched_soft_nms(xyxy, image_scores, image_labels, iou_threshold=self.soft_nms_iou)
                xyxy, image_labels = xyxy[keep], image_labels[keep]
            instances = Instances((h, w))
            instances.pred_boxes = Boxes(xyxy)
            instances.pred_boxes.clip((h, w))
            instances.scores = image_scores
            instances.pred_classes = image_labels
            height = batched_inputs[b].get("height", h)
            width = batched_inputs[b].get("width", w)
            results.append({"instances": detector_postprocess(instances, height, width)})
        return results
