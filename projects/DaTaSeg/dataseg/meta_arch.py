"""DaTaSeg: one segmenter for every dataset and task, all parameters shared.

backbone -> multi-scale deformable-attention pixel decoder -> masked-attention Transformer decoder -> N mask
proposals, each classified against the text embeddings of the batch's dataset vocabulary plus one shared
learnable background embedding. Training uses the batch's task (MERGE + matching + losses, :mod:`.criterion`);
inference turns the same proposals into semantic, panoptic and instance outputs with the vocabulary currently set
on the classifier (the test dataset's, set by ``unidet2.modeling.set_vocabulary`` / the engine's evaluation).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from detectron2.data import MetadataCatalog
from detectron2.modeling import Backbone
from detectron2.structures import ImageList
from torch import nn

from .criterion import DaTaSegCriterion
from .merge import MERGE_BY_TASK
from .pixel_decoder import MSDeformAttnPixelDecoder
from .postprocess import THING_FILTERS, instance_inference, panoptic_inference, semantic_inference
from .transformer_decoder import MaskedAttentionDecoder
from .vocabulary import DatasetVocabulary, thing_classes_of

__all__ = ["DaTaSeg"]

logger = logging.getLogger(__name__)


class DaTaSeg(nn.Module):
    """Universal multi-dataset multi-task segmenter (see module doc).

    Training input: a ``list[dict]`` from ONE dataset (``dataset_name``, ``task``, ``image``, ``instances`` as
    produced by :class:`unidet2.data.mapper.MultiDatasetMapper` with identity label maps, i.e. classes are the
    dataset's contiguous ids). Output: dict of losses.

    Inference output per image: ``sem_seg`` (C, H, W) scores, ``panoptic_seg`` (ids (H, W) int32, segments_info)
    and ``instances`` (pred_masks, pred_boxes, scores, pred_classes), at the input's ``height`` x ``width``, for the
    vocabulary currently set on the classifier; which of them is produced is set by ``semantic_on`` /
    ``panoptic_on`` / ``instance_on``.
    """

    def __init__(
        self,
        *,
        backbone: Backbone,
        pixel_decoder: MSDeformAttnPixelDecoder,
        transformer_decoder: MaskedAttentionDecoder,
        criterion: DaTaSegCriterion,
        train_vocabularies: Mapping[str, DatasetVocabulary],
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        size_divisibility: int = 32,
        dataset_loss_weights: Mapping[str, float] | None = None,
        semantic_on: bool = True,
        panoptic_on: bool = True,
        instance_on: bool = True,
        object_mask_threshold: float = 0.8,
        overlap_threshold: float = 0.8,
        max_detections_per_image: int = 100,
        instance_thing_filter: str = "after_topk",
    ):
        """
        Args:
            backbone: detectron2 backbone with the pixel decoder's input features.
            pixel_decoder: see :class:`.pixel_decoder.MSDeformAttnPixelDecoder`.
            transformer_decoder: see :class:`.transformer_decoder.MaskedAttentionDecoder` (holds the classifier).
            criterion: see :class:`.criterion.DaTaSegCriterion`.
            train_vocabularies: training dataset name -> :class:`.vocabulary.DatasetVocabulary`.
            pixel_mean, pixel_std: input normalisation (BGR/RGB as the images).
            size_divisibility: pad the image batch to a multiple of it.
            dataset_loss_weights: training dataset name -> weight of all its losses (default 1).
            semantic_on, panoptic_on, instance_on: inference outputs.
            object_mask_threshold, overlap_threshold: panoptic inference (Mask2Former: 0.8, 0.8).
            max_detections_per_image: instance inference (top-k pairs, Mask2Former: 100).
            instance_thing_filter: "after_topk" (Mask2Former) or "before_topk": when stuff pairs are dropped
                from the instance output (:func:`.postprocess.instance_inference`).
        """
        super().__init__()
        if not train_vocabularies:
            raise ValueError("train_vocabularies is empty: DaTaSeg needs the vocabulary of every training dataset")
        self.backbone = backbone
        self.pixel_decoder = pixel_decoder
        self.transformer_decoder = transformer_decoder
        self.criterion = criterion
        self.size_divisibility = size_divisibility
        self.semantic_on, self.panoptic_on, self.instance_on = semantic_on, panoptic_on, instance_on
        self.object_mask_threshold = object_mask_threshold
        self.overlap_threshold = overlap_threshold
        self.max_detections_per_image = max_detections_per_image
        if instance_thing_filter not in THING_FILTERS:
            raise ValueError(f"instance_thing_filter must be one of {THING_FILTERS}, got {instance_thing_filter!r}")
        self.instance_thing_filter = instance_thing_filter
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(-1, 1, 1), False)

        classifier = transformer_decoder.classifier
        self._train_names = list(train_vocabularies)
        self._thing_classes = {}
        for index, (name, vocabulary) in enumerate(train_vocabularies.items()):
            if vocabulary.embeddings.shape[1] != classifier.embed_dim:
                raise ValueError(
                    f"vocabulary of {name!r} has embedding dim {vocabulary.embeddings.shape[1]}, the classifier "
                    f"{classifier.embed_dim}"
                )
            embeddings = torch.nn.functional.normalize(torch.as_tensor(vocabulary.embeddings).float(), dim=1)
            # Non-persistent: the vocabularies come from the config, checkpoints stay vocabulary-independent.
            self.register_buffer(f"_train_embeddings_{index}", embeddings, persistent=False)
            self._thing_classes[name] = list(vocabulary.thing_classes)
        self.dataset_loss_weights = dict(dataset_loss_weights or {})
        unknown = sorted(set(self.dataset_loss_weights) - set(self._train_names))
        if unknown:
            raise ValueError(f"dataset_loss_weights names {unknown} are not training datasets {self._train_names}")
        self._test_thing_classes: dict[str, list[bool]] = {}

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def classifier(self):
        return self.transformer_decoder.classifier

    def train_embeddings(self, dataset_name: str) -> torch.Tensor:
        """(C_d, D) text embeddings of a training dataset."""
        if dataset_name not in self._train_names:
            raise KeyError(
                f"batch of dataset {dataset_name!r}, which is not among DaTaSeg's training vocabularies "
                f"{self._train_names}"
            )
        return getattr(self, f"_train_embeddings_{self._train_names.index(dataset_name)}")

    # ------------------------------------------------------------------------------------------ forward
    def preprocess_image(self, batched_inputs: list[dict]) -> ImageList:
        images = [(x["image"].to(self.device).float() - self.pixel_mean) / self.pixel_std for x in batched_inputs]
        return ImageList.from_tensors(images, self.size_divisibility)

    def forward_proposals(self, images: ImageList, class_embeddings: torch.Tensor | None = None) -> dict:
        """Backbone + pixel decoder + transformer decoder: the decoder's output dict (see its doc)."""
        features = self.backbone(images.tensor)
        mask_features, multi_scale_features = self.pixel_decoder(features)
        return self.transformer_decoder(multi_scale_features, mask_features, class_embeddings)

    def forward(self, batched_inputs: list[dict]):
        images = self.preprocess_image(batched_inputs)
        if not self.training:
            return self.inference(batched_inputs, images)
        dataset_name, task = self._batch_dataset(batched_inputs)
        outputs = self.forward_proposals(images, self.train_embeddings(dataset_name))
        targets = self._targets(batched_inputs, task, images.tensor.shape[-2:])
        stuff_classes = torch.tensor([not t for t in self._thing_classes[dataset_name]], device=self.device)
        losses = self.criterion(
            outputs, targets, task=task, image_size=tuple(images.tensor.shape[-2:]), stuff_classes=stuff_classes
        )
        weight = float(self.dataset_loss_weights.get(dataset_name, 1.0))
        if weight != 1.0:
            losses = {key: value * weight for key, value in losses.items()}
        return losses

    @staticmethod
    def _batch_dataset(batched_inputs: list[dict]) -> tuple[str, str]:
        names = {x.get("dataset_name") for x in batched_inputs}
        if len(names) != 1 or None in names:
            raise ValueError(
                f"DaTaSeg trains on one dataset per batch, got dataset_name values {sorted(map(str, names))}; use "
                "unidet2.data.build.build_multi_dataset_train_loader"
            )
        tasks = {"box" if x.get("weak_box_supervision") else x.get("task") for x in batched_inputs}
        if len(tasks) != 1:
            raise ValueError(f"batch of {names} mixes tasks {sorted(map(str, tasks))}")
        task = tasks.pop()
        if task not in MERGE_BY_TASK:
            raise ValueError(f"DaTaSeg cannot train on task {task!r} ({sorted(MERGE_BY_TASK)} are supported)")
        return names.pop(), task

    def _targets(self, batched_inputs: list[dict], task: str, padded_size) -> list[dict]:
        """Per image: labels, and masks padded to the batch size or boxes; isthing for panoptic."""
        padded_height, padded_width = int(padded_size[0]), int(padded_size[1])
        targets = []
        for x in batched_inputs:
            if "instances" not in x:
                raise ValueError(f"training input {x.get('file_name')!r} has no 'instances'")
            instances = x["instances"].to(self.device)
            target = {"labels": instances.gt_classes}
            if task in ("box", "detection"):
                target["boxes"] = instances.gt_boxes.tensor
            else:
                if not instances.has("gt_masks"):
                    raise ValueError(f"{task} input {x.get('file_name')!r} has no gt_masks")
                masks = instances.gt_masks.tensor
                height, width = masks.shape[-2:]
                target["masks"] = F.pad(masks, (0, padded_width - width, 0, padded_height - height))
                if task == "panoptic":
                    target["isthing"] = instances.gt_isthing
            targets.append(target)
        return targets

    # ------------------------------------------------------------------------------------------ inference
    def _test_thing_classes_for(self, dataset_name: str | None) -> list[bool]:
        """Thing flags of the current vocabulary: from the test dataset's metadata, else all things."""
        num_classes = self.classifier.num_classes
        key = f"{dataset_name}:{num_classes}"
        if key not in self._test_thing_classes:
            flags = [True] * num_classes
            if dataset_name is not None:
                metadata = MetadataCatalog.get(dataset_name)
                vocabulary = metadata.get("vocabulary", None)
                if vocabulary is not None and len(vocabulary) == num_classes:
                    flags = thing_classes_of(metadata, num_classes)
                else:
                    logger.warning(
                        "Dataset %r has %s classes but the classifier's vocabulary %d: was its vocabulary set? "
                        "Treating every class as a thing.",
                        dataset_name,
                        None if vocabulary is None else len(vocabulary),
                        num_classes,
                    )
            self._test_thing_classes[key] = flags
        return self._test_thing_classes[key]

    def inference(self, batched_inputs: list[dict], images: ImageList) -> list[dict]:
        outputs = self.forward_proposals(images)
        class_logits, mask_logits = outputs["pred_logits"], outputs["pred_masks"]
        mask_logits = F.interpolate(
            mask_logits.float(), size=images.tensor.shape[-2:], mode="bilinear", align_corners=False
        )
        results = []
        for image_logits, image_masks, x, image_size in zip(
            class_logits, mask_logits, batched_inputs, images.image_sizes
        ):
            height, width = x.get("height", image_size[0]), x.get("width", image_size[1])
            image_masks = image_masks[:, : image_size[0], : image_size[1]]
            image_masks = F.interpolate(image_masks[None], size=(height, width), mode="bilinear", align_corners=False)[
                0
            ]
            thing_classes = self._test_thing_classes_for(x.get("dataset_name"))
            result = {}
            if self.semantic_on:
                result["sem_seg"] = semantic_inference(image_logits, image_masks)
            if self.panoptic_on:
                result["panoptic_seg"] = panoptic_inference(
                    image_logits,
                    image_masks,
                    thing_classes,
                    object_mask_threshold=self.object_mask_threshold,
                    overlap_threshold=self.overlap_threshold,
                )
            if self.instance_on:
                result["instances"] = instance_inference(
                    image_logits,
                    image_masks,
                    thing_classes if not all(thing_classes) else None,
                    max_detections=self.max_detections_per_image,
                    thing_filter=self.instance_thing_filter,
                )
            results.append(result)
        return results
