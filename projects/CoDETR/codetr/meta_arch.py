"""Co-DETR (Zong et al., ICCV 2023) on Co-Deformable-DETR, as a detectron2 meta-architecture.

Training (``codetr.md`` §3):

    L = sum_l [ L_l^dec  +  lambda_1 * sum_k L_{k,l}^dec ]  +  L * lambda_2 * sum_k L_k^enc

* L_l^dec: Hungarian (one-to-one) loss of the main queries at decoder layer l (+ the two-stage encoder
  proposal loss);
* L_k^enc: the native loss of auxiliary head k (ATSS, Faster R-CNN, ...) on the multi-scale adapter (the
  encoder memory cut back into maps plus one stride-2 conv + GN level), weighted by ``aux_loss_scale`` =
  num_decoder_layers * lambda_2 (the configs of the paper write the same product into each loss weight);
* L_{k,l}^dec: the positive queries built from head k's assignment (:mod:`.positive_queries`), decoded by
  the shared decoder and supervised with the head's fixed targets at every layer l.

Inference runs the main query branch only; :meth:`CoDETR.strip_auxiliary` removes every training-only
module, after which the model has exactly Deformable-DETR's parameters. With ``aux_heads=[]`` the model *is*
Deformable-DETR (two-stage / box refinement / mixed selection / look-forward-twice as configured).

Classifier: a linear layer per decoder layer (``num_classes``), or a :class:`TextEmbeddingClassifier` per
layer (``class_head``, deep-copied) over a unified multi-dataset label space, trained with ScaleDet's hard
and soft label losses (see :class:`.criterion.DetrClassificationLoss`); :func:`unidet2.modeling.set_vocabulary`
then swaps the vocabulary of every query classifier at test time.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from detectron2.modeling.backbone import Backbone
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, ImageList, Instances
from torch import nn

from unidet2.modeling.detr import (
    MLP,
    ChannelMapper,
    HungarianMatcher,
    SinePositionEmbedding,
    box_sine_embedding,
    cxcywh_to_xyxy,
    inverse_sigmoid,
)
from unidet2.modeling.label_assignment_losses import dataset_class_mask
from unidet2.modeling.similarity import VocabularySimilarity
from unidet2.modeling.text_classifier import EmbeddingsLike, TextEmbeddingClassifier

from .aux_heads import AuxTargets
from .criterion import DetrClassificationLoss, SetCriterion, global_normalizer
from .positive_queries import (
    PositiveQueryBatch,
    build_positive_queries,
    group_attention_mask,
    padding_attention_mask,
)
from .transformer import DeformableTransformer, EncoderOutput

__all__ = ["AUX_QUERY_MODES", "CoDETR"]

logger = logging.getLogger(__name__)

AUX_QUERY_MODES = ("separate", "concat")

# Attribute names of the modules that only training uses (dropped by strip_auxiliary).
_TRAINING_ONLY = ("aux_heads", "adapter_downsample", "aux_pos_trans", "aux_pos_trans_norm", "pos_feats_trans",
                  "pos_feats_norm", "head_pos_embed")


def _classify(head: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(..., D) -> logits (..., C) and, for a text classifier, the cosines (..., C)."""
    if isinstance(head, TextEmbeddingClassifier):
        flat = x.reshape(-1, x.shape[-1])
        cosine = head.forward_cosine(flat)
        logits = head.cosine_to_logits(cosine)
        return logits.view(*x.shape[:-1], -1), cosine.view(*x.shape[:-1], -1)
    return head(x), None


class CoDETR(nn.Module):
    """Co-Deformable-DETR. See the module docstring for the objective; tensor shapes in method docstrings."""

    def __init__(
        self,
        *,
        backbone: Backbone,
        neck: ChannelMapper,
        transformer: DeformableTransformer,
        num_queries: int = 300,
        num_classes: int | None = None,
        class_head: TextEmbeddingClassifier | None = None,
        aux_heads: Sequence[nn.Module] = (),
        with_box_refine: bool = True,
        two_stage: bool = True,
        mixed_selection: bool = True,
        lambda_1: float = 1.0,
        lambda_2: float = 2.0,
        aux_loss_scale: float | None = None,
        matcher: HungarianMatcher | None = None,
        classification_loss: DetrClassificationLoss | None = None,
        loss_weights: dict[str, float] | None = None,
        max_positive_queries: int = 300,
        min_positive_queries: int = 9,
        zero_padding: bool = False,
        aux_query_mode: str = "separate",
        with_coord_feat: bool = True,
        adapter_norm_groups: int = 32,
        similarity: EmbeddingsLike | None = None,
        similarity_normalization: str = "minmax_row",
        similarity_symmetrize: bool = False,
        dataset_columns: Sequence[Sequence[int]] | None = None,
        partitioned_negatives: bool = False,
        pixel_mean: Sequence[float] = (123.675, 116.28, 103.53),
        pixel_std: Sequence[float] = (58.395, 57.12, 57.375),
        size_divisibility: int = 0,
        test_topk: int = 100,
    ):
        """
        Args:
            backbone: detectron2 backbone (dict of maps).
            neck: :class:`ChannelMapper` to the transformer's levels and width.
            transformer: :class:`DeformableTransformer`.
            num_queries: one-to-one queries (300; 900 for the Swin-L 3x model).
            num_classes: C for a linear classifier (ignored when ``class_head`` is given).
            class_head: a text classifier over the training vocabulary (input_dim = d_model, no background);
                deep-copied once per decoder layer.
            aux_heads: auxiliary heads (K of them; empty = Deformable-DETR), see :mod:`.aux_heads`.
            with_box_refine: iterative box refinement (separate class/box heads per decoder layer).
            two_stage: queries from the top encoder proposals.
            mixed_selection: with two-stage, content queries are learned embeddings, positions from proposals.
            lambda_1: weight of the positive-query losses.
            lambda_2: weight of the auxiliary-head losses inside the sum over layers.
            aux_loss_scale: multiplier of every auxiliary-head loss; None = num_decoder_layers * lambda_2.
            matcher: Hungarian matcher (default: costs 2 / 5 / 2).
            classification_loss: loss of the query classifier (default: focal 0.25 / 2).
            loss_weights: weights of {"cls", "bbox", "giou"} (default 2 / 5 / 2); the soft label loss is
                weighted by ``classification_loss.soft_loss_weight``.
            max_positive_queries, min_positive_queries: limits of positive queries per head and image.
            zero_padding: pad positive queries with masked zeros instead of negatives.
            aux_query_mode: "separate" (one decoder pass per head, the official code) or "concat" (all
                heads in one pass with a block-diagonal self-attention mask).
            with_coord_feat: add the projected anchor / RoI feature to the positive queries' content.
            adapter_norm_groups: GroupNorm groups of the adapter's extra level.
            similarity: (C, C) label-similarity matrix for the soft loss (default: from the class head's
                embeddings with ``similarity_normalization`` and ``similarity_symmetrize``, ScaleDet's defaults).
            dataset_columns: per training dataset, its columns in the unified label space.
            partitioned_negatives: only penalise an image's own dataset's columns (needs dataset_columns
                and ``dataset_source`` in the inputs).
            pixel_mean, pixel_std: normalisation, in the channel order of the input images.
            size_divisibility: pad the batch to a multiple of this (0 = to the largest image).
            test_topk: detections per image at inference (top scores over queries x classes, no NMS).
        """
        super().__init__()
        if aux_query_mode not in AUX_QUERY_MODES:
            raise ValueError(f"aux_query_mode must be one of {AUX_QUERY_MODES}, got {aux_query_mode!r}")
        if class_head is None and num_classes is None:
            raise ValueError("CoDETR needs num_classes (linear classifier) or a text class_head")
        if neck.num_levels != transformer.num_levels:
            raise ValueError(f"neck gives {neck.num_levels} levels, transformer expects {transformer.num_levels}")
        if partitioned_negatives and dataset_columns is None:
            raise ValueError("partitioned_negatives=True needs dataset_columns")
        self.backbone, self.neck, self.transformer = backbone, neck, transformer
        d_model = transformer.d_model
        num_decoder_layers = transformer.decoder.num_layers
        self.num_queries, self.with_box_refine, self.two_stage = num_queries, with_box_refine, two_stage
        self.mixed_selection = mixed_selection and two_stage
        self.position_embedding = SinePositionEmbedding(d_model // 2, temperature=10000.0, offset=-0.5)

        # ---- prediction heads (one per decoder layer, + the two-stage encoder proposal head)
        if class_head is None:
            class_head = nn.Linear(d_model, num_classes)
            nn.init.constant_(class_head.bias, -math.log((1 - 0.01) / 0.01))
        elif not isinstance(class_head, TextEmbeddingClassifier) or class_head.has_background:
            raise ValueError("class_head must be a TextEmbeddingClassifier with background='none'")
        elif class_head.input_dim != d_model:
            raise ValueError(f"class_head.input_dim={class_head.input_dim}, the decoder width is {d_model}")
        bbox_head = MLP(d_model, d_model, 4, 3)
        nn.init.constant_(bbox_head.layers[-1].weight, 0.0)
        nn.init.constant_(bbox_head.layers[-1].bias, 0.0)
        num_box_heads = num_decoder_layers + (1 if two_stage else 0)
        if with_box_refine:
            self.class_embed = nn.ModuleList(copy.deepcopy(class_head) for _ in range(num_decoder_layers))
            self.bbox_embed = nn.ModuleList(copy.deepcopy(bbox_head) for _ in range(num_box_heads))
        else:  # shared heads (the same module listed several times)
            self.class_embed = nn.ModuleList([class_head] * num_decoder_layers)
            self.bbox_embed = nn.ModuleList([bbox_head] * num_box_heads)
        if not two_stage:  # Deformable-DETR: initial boxes are small (w, h = sigmoid(-2))
            nn.init.constant_(self.bbox_embed[0].layers[-1].bias[2:], -2.0)

        if two_stage:
            self.enc_output = nn.Linear(d_model, d_model)
            self.enc_output_norm = nn.LayerNorm(d_model)
            # Binary objectness of the encoder proposals. Deformable-DETR uses a C-way head trained with
            # label 0 only and ranks by its first logit; the other C - 1 logits only ever see negatives and
            # are never read, so one logit is equivalent (and independent of the vocabulary).
            self.enc_class_embed = nn.Linear(d_model, 1)
            nn.init.constant_(self.enc_class_embed.bias, -math.log((1 - 0.01) / 0.01))
            self.pos_trans = nn.Linear(2 * d_model, 2 * d_model)
            self.pos_trans_norm = nn.LayerNorm(2 * d_model)
            if self.mixed_selection:
                self.query_embed = nn.Embedding(num_queries, d_model)
        else:
            self.query_embed = nn.Embedding(num_queries, 2 * d_model)
            self.reference_points = nn.Linear(d_model, 2)
            nn.init.xavier_uniform_(self.reference_points.weight)
            nn.init.constant_(self.reference_points.bias, 0.0)

        # ---- Co-DETR training-only modules
        self.aux_heads = nn.ModuleList(aux_heads)
        num_aux = len(self.aux_heads)
        for k, head in enumerate(self.aux_heads):
            head_classes = getattr(head, "num_classes", None)
            if head_classes is not None and head_classes != self.num_classes:
                raise ValueError(f"aux head {k} ({type(head).__name__}) has {head_classes} classes, "
                                 f"the query head {self.num_classes}")
        if num_aux:
            self.adapter_downsample = nn.Sequential(
                nn.Conv2d(d_model, d_model, 3, stride=2, padding=1), nn.GroupNorm(adapter_norm_groups, d_model)
            )
            self.aux_pos_trans = nn.ModuleList(nn.Linear(2 * d_model, 2 * d_model) for _ in range(num_aux))
            self.aux_pos_trans_norm = nn.ModuleList(nn.LayerNorm(2 * d_model) for _ in range(num_aux))
            if with_coord_feat:
                self.pos_feats_trans = nn.ModuleList(nn.Linear(d_model, d_model) for _ in range(num_aux))
                self.pos_feats_norm = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(num_aux))
                # Co-DETR's code builds nn.Embedding(K, 1, 1, d) (a kept bug, codetr.md §8.6); (K, d) is meant.
                self.head_pos_embed = nn.Embedding(num_aux, d_model)
        self.with_coord_feat = with_coord_feat
        self.lambda_1, self.lambda_2 = float(lambda_1), float(lambda_2)
        self.aux_loss_scale = float(num_decoder_layers * lambda_2 if aux_loss_scale is None else aux_loss_scale)
        self.max_positive_queries, self.min_positive_queries = max_positive_queries, min_positive_queries
        self.zero_padding, self.aux_query_mode = zero_padding, aux_query_mode

        # ---- losses
        matcher = matcher if matcher is not None else HungarianMatcher()
        self.criterion = SetCriterion(matcher, classification_loss, loss_weights)
        # Encoder proposals are class-agnostic: plain focal loss on the objectness logit.
        self.encoder_criterion = SetCriterion(matcher, DetrClassificationLoss(), loss_weights)
        soft = self.criterion.classification_loss.soft_loss_weight > 0
        if soft and not self.uses_text_classifier:
            raise ValueError("The soft label loss needs a text class_head")
        # Ŝ of the current vocabulary: derived from the embeddings, it follows set_vocabulary; a given matrix cannot.
        self.label_similarity = (
            VocabularySimilarity(
                self.class_embed[0],
                similarity,
                normalization=similarity_normalization,
                symmetrize=similarity_symmetrize,
            )
            if soft
            else None
        )
        if dataset_columns is not None:
            self.register_buffer("dataset_class_mask", dataset_class_mask(dataset_columns, self.num_classes),
                                 persistent=False)
        else:
            self.dataset_class_mask = None
        self.partitioned_negatives = partitioned_negatives

        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(-1, 1, 1), False)
        self.size_divisibility, self.test_topk = size_divisibility, test_topk

    # ------------------------------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def similarity(self) -> torch.Tensor | None:
        """Ŝ (C, C) of the class head's current vocabulary for the soft loss; None without one."""
        return self.label_similarity(self.class_embed[0]) if self.label_similarity is not None else None

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

    def training_only_modules(self) -> dict[str, nn.Module]:
        """The modules Co-DETR adds for training (aux heads, adapter level, positive-query projections)."""
        return {name: getattr(self, name) for name in _TRAINING_ONLY if hasattr(self, name)}

    def inference_parameter_count(self) -> int:
        """Parameters used at inference (all but :meth:`training_only_modules`)."""
        skip = {id(p) for m in self.training_only_modules().values() for p in m.parameters()}
        return sum(p.numel() for p in self.parameters() if id(p) not in skip)

    def strip_auxiliary(self) -> CoDETR:
        """Delete the training-only modules (in place; returns self): what remains is Deformable-DETR.
        The model can no longer train with positive queries afterwards."""
        for name in self.training_only_modules():
            delattr(self, name)
        self.aux_heads = nn.ModuleList()
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

    def _predict(self, hidden: torch.Tensor, references: torch.Tensor):
        """Per-layer class logits (+ cosines) and boxes. hidden: (L, B, Q, C); references: L x (B, Q, 2|4)."""
        logits, cosines, boxes = [], [], []
        for layer in range(hidden.shape[0]):
            layer_logits, layer_cosine = _classify(self.class_embed[layer], hidden[layer])
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
        return self.bbox_embed[: self.num_decoder_layers] if self.with_box_refine else None

    def forward_queries(self, encoded: EncoderOutput) -> dict:
        """Main (one-to-one) query branch.

        Returns:
            {"logits": L x (B, Q, C), "cosines": L x ((B, Q, C) or None), "boxes": L x (B, Q, 4) normalised
            cxcywh, and with two-stage "enc_logits" (B, S, 1), "enc_boxes" (B, S, 4)}.
        """
        batch, d_model = encoded.memory.shape[0], self.transformer.d_model
        out = {}
        if self.two_stage:
            masked_memory, proposals = self.transformer.encoder_output_proposals(encoded)
            output_memory = self.enc_output_norm(self.enc_output(masked_memory))
            enc_logits = self.enc_class_embed(output_memory)
            enc_boxes_unact = self.bbox_embed[self.num_decoder_layers](output_memory) + proposals
            out["enc_logits"], out["enc_boxes"] = enc_logits, enc_boxes_unact.sigmoid()
            # Padded / border tokens carry +inf proposals: never select them (as DINO does).
            ranking = enc_logits[..., 0].masked_fill(torch.isinf(proposals).any(-1), float("-inf"))
            topk = min(self.num_queries, ranking.shape[1])
            topk_index = ranking.topk(topk, dim=1).indices
            topk_unact = torch.gather(enc_boxes_unact, 1, topk_index[..., None].expand(-1, -1, 4)).detach()
            reference = topk_unact.sigmoid()
            pos_trans = self.pos_trans_norm(self.pos_trans(box_sine_embedding(topk_unact, d_model // 2)))
            query_pos, tgt = pos_trans.split(d_model, dim=-1)
            if self.mixed_selection:
                tgt = self.query_embed.weight[:topk][None].expand(batch, -1, -1)
        else:
            query_pos, tgt = self.query_embed.weight.split(d_model, dim=1)
            query_pos, tgt = query_pos[None].expand(batch, -1, -1), tgt[None].expand(batch, -1, -1)
            reference = self.reference_points(query_pos).sigmoid()
        hidden, references = self.transformer.decode(tgt, query_pos, reference, encoded, self._decoder_box_heads())
        out["logits"], out["cosines"], out["boxes"] = self._predict(hidden, references)
        return out

    def _positive_query_embeddings(self, k: int, queries: PositiveQueryBatch):
        d_model = self.transformer.d_model
        unact = inverse_sigmoid(queries.reference_boxes)
        pos_trans = self.aux_pos_trans_norm[k](self.aux_pos_trans[k](box_sine_embedding(unact, d_model // 2)))
        query_pos, tgt = pos_trans.split(d_model, dim=-1)
        if self.with_coord_feat:
            tgt = tgt + self.pos_feats_norm[k](self.pos_feats_trans[k](queries.features))
            query_pos = query_pos + self.head_pos_embed.weight[k]
        return tgt, query_pos

    def forward_positive_queries(self, encoded: EncoderOutput, groups: list[PositiveQueryBatch]) -> list[dict]:
        """Decode every head's positive queries with the shared decoder and heads.

        Returns:
            per head {"logits", "cosines", "boxes"} as in :meth:`forward_queries` (Q = that head's M).
        """
        num_heads = self.transformer.num_heads
        embeddings = [self._positive_query_embeddings(k, g) for k, g in enumerate(groups)]
        if self.aux_query_mode == "separate" or len(groups) == 1:
            outputs = []
            for (tgt, query_pos), group in zip(embeddings, groups):
                mask = padding_attention_mask(group.valid, num_heads)
                hidden, refs = self.transformer.decode(tgt, query_pos, group.reference_boxes, encoded,
                                                       self._decoder_box_heads(), mask)
                logits, cosines, boxes = self._predict(hidden, refs)
                outputs.append({"logits": logits, "cosines": cosines, "boxes": boxes})
            return outputs
        tgt = torch.cat([e[0] for e in embeddings], 1)
        query_pos = torch.cat([e[1] for e in embeddings], 1)
        reference = torch.cat([g.reference_boxes for g in groups], 1)
        mask = group_attention_mask([g.valid for g in groups], num_heads)
        hidden, refs = self.transformer.decode(tgt, query_pos, reference, encoded, self._decoder_box_heads(), mask)
        logits, cosines, boxes = self._predict(hidden, refs)
        sizes = [g.num_queries for g in groups]

        def split(values):
            return [None] * len(sizes) if values is None else list(values.split(sizes, dim=1))

        per_layer = [(split(lg), split(c), split(b)) for lg, c, b in zip(logits, cosines, boxes)]
        return [
            {"logits": [layer[0][k] for layer in per_layer], "cosines": [layer[1][k] for layer in per_layer],
             "boxes": [layer[2][k] for layer in per_layer]}
            for k in range(len(groups))
        ]

    def adapter_features(self, encoded: EncoderOutput) -> list[torch.Tensor]:
        """Co-DETR's multi-scale adapter: encoder memory as L maps plus one stride-2 conv + GN level."""
        maps = encoded.level_maps()
        return maps + [self.adapter_downsample(maps[-1])]

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
        outputs = self.forward_queries(encoded)
        if not self.training:
            return self.inference(outputs, images.image_sizes, batched_inputs)
        if "instances" not in batched_inputs[0]:
            raise ValueError("CoDETR training needs 'instances' in every input dict")
        gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
        return self.losses(outputs, encoded, images, gt_instances, self._class_masks(batched_inputs))

    # --------------------------------------------------------------------------------------------- losses
    def _class_masks(self, batched_inputs: list[dict]) -> torch.Tensor | None:
        if not self.partitioned_negatives:
            return None
        if self.dataset_class_mask.shape[1] != self.num_classes:
            raise ValueError("partitioned negatives need the training vocabulary (restore it after set_vocabulary)")
        sources = []
        for x in batched_inputs:
            if "dataset_source" not in x:
                raise ValueError(f"{x.get('file_name', '?')}: partitioned_negatives needs 'dataset_source'")
            source = int(x["dataset_source"])
            if not 0 <= source < len(self.dataset_class_mask):
                raise ValueError(f"{x.get('file_name', '?')}: dataset_source {source} outside the "
                                 f"{len(self.dataset_class_mask)} datasets of dataset_columns")
            sources.append(source)
        return self.dataset_class_mask[torch.as_tensor(sources, device=self.device)]

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
        num_classes = self.num_classes
        for instances in gt_instances:
            classes = instances.gt_classes
            if classes.numel() and (int(classes.min()) < 0 or int(classes.max()) >= num_classes):
                raise ValueError(f"gt_classes {classes.unique().tolist()} outside the {num_classes} classes "
                                 "of the query classifier; are the annotations mapped to its label space?")
        targets = self._normalized_targets(gt_instances, images.image_sizes)
        num_boxes = global_normalizer(sum(len(t["labels"]) for t in targets), self.device)
        losses = {}
        for layer in range(self.num_decoder_layers):
            layer_losses = self.criterion.hungarian_loss(
                outputs["logits"][layer], outputs["boxes"][layer], targets, num_boxes,
                cosine=outputs["cosines"][layer], similarity=self.similarity, class_masks=class_masks,
            )
            losses.update({f"loss_{name}_dec{layer}": value for name, value in layer_losses.items()})
        if self.two_stage:
            binary_targets = [{"labels": torch.zeros_like(t["labels"]), "boxes": t["boxes"]} for t in targets]
            enc_losses = self.encoder_criterion.hungarian_loss(outputs["enc_logits"], outputs["enc_boxes"],
                                                               binary_targets, num_boxes)
            losses.update({f"loss_{name}_enc": value for name, value in enc_losses.items()})
        if len(self.aux_heads):
            losses.update(self._auxiliary_losses(encoded, images, gt_instances, class_masks))
        return losses

    def _auxiliary_losses(self, encoded, images, gt_instances, class_masks) -> dict[str, torch.Tensor]:
        losses, groups = {}, []
        adapter = self.adapter_features(encoded)
        for k, head in enumerate(self.aux_heads):
            head_losses, assignment = head(images, adapter, gt_instances)
            if not isinstance(assignment, AuxTargets):
                raise TypeError(f"aux head {k} ({type(head).__name__}) must return (losses, AuxTargets)")
            losses.update({f"{name}_aux{k}": value * self.aux_loss_scale for name, value in head_losses.items()})
            groups.append(build_positive_queries(
                assignment, images.image_sizes, self.num_classes, max_queries=self.max_positive_queries,
                min_queries=self.min_positive_queries, zero_padding=self.zero_padding,
            ))
        for k, (group, out) in enumerate(zip(groups, self.forward_positive_queries(encoded, groups))):
            num_positives = global_normalizer(group.num_positives, self.device)
            for layer in range(self.num_decoder_layers):
                layer_losses = self.criterion.fixed_assignment_loss(
                    out["logits"][layer], out["boxes"][layer], group.labels, group.label_weights,
                    group.target_boxes, group.box_weights, num_positives,
                    cosine=out["cosines"][layer], similarity=self.similarity, class_masks=class_masks,
                )
                losses.update({f"loss_{name}_pos{k}_dec{layer}": value * self.lambda_1
                               for name, value in layer_losses.items()})
        return losses

    # ------------------------------------------------------------------------------------------ inference
    def inference(self, outputs: dict, image_sizes, batched_inputs: list[dict]) -> list[dict]:
        """Top ``test_topk`` (query, class) pairs per image by sigmoid score, no NMS."""
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
            instances = Instances((h, w))
            instances.pred_boxes = Boxes(xyxy)
            instances.pred_boxes.clip((h, w))
            instances.scores = top_scores[b]
            instances.pred_classes = labels[b]
            height = batched_inputs[b].get("height", h)
            width = batched_inputs[b].get("width", w)
            results.append({"instances": detector_postprocess(instances, height, width)})
        return results
