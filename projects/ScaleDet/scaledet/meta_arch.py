"""ScaleDet meta-architecture: detectron2's GeneralizedRCNN that passes each image's source dataset on."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from detectron2.config import configurable
from detectron2.modeling import GeneralizedRCNN
from detectron2.structures import Instances
from detectron2.utils.events import get_event_storage

from .roi_heads import ScaleDetCascadeROIHeads, ScaleDetStandardROIHeads

__all__ = ["ScaleDetRCNN"]

logger = logging.getLogger(__name__)

_GT_CLASS_SPACES = ("unified", "dataset")


class ScaleDetRCNN(GeneralizedRCNN):
    """GeneralizedRCNN for multi-dataset training in a unified label space.

    Training inputs may carry ``dataset_source`` (int, the dataset's index in the training list, stamped by
    ``unidet2.data.build``); it is forwarded to the ScaleDet ROI heads (partitioned negatives) and, with
    ``gt_classes_space="dataset"``, used to map each image's dataset-local ``gt_classes`` (contiguous ids of
    its own dataset, what detectron2's ``DatasetMapper`` produces) into the unified label space through
    ``dataset_columns``. With ``gt_classes_space="unified"`` the mapper is expected to have done that already.
    Inference is unchanged (the vocabulary is whatever :func:`unidet2.modeling.set_vocabulary` last set).
    """

    @configurable
    def __init__(
        self,
        *,
        gt_classes_space: str = "unified",
        dataset_columns: Sequence[Sequence[int]] | None = None,
        **kwargs,
    ):
        """
        Args:
            gt_classes_space: "unified" (gt_classes already index the unified label space) or "dataset"
                (dataset-local ids, mapped with ``dataset_columns[dataset_source]``).
            dataset_columns: per training dataset, its column indices in the unified label space.
            kwargs: arguments of :class:`GeneralizedRCNN` (backbone, proposal_generator, roi_heads, ...).
        """
        super().__init__(**kwargs)
        if gt_classes_space not in _GT_CLASS_SPACES:
            raise ValueError(f"gt_classes_space must be one of {_GT_CLASS_SPACES}, got {gt_classes_space!r}")
        if gt_classes_space == "dataset" and dataset_columns is None:
            raise ValueError("gt_classes_space='dataset' needs dataset_columns")
        self.gt_classes_space = gt_classes_space
        # Plain tensors (not buffers): tiny, rebuilt from the config, moved to the GT's device when used.
        self.dataset_columns = (
            [torch.as_tensor(list(columns), dtype=torch.long) for columns in dataset_columns]
            if dataset_columns is not None
            else None
        )

    @staticmethod
    def _dataset_sources(batched_inputs: list[dict]) -> list[int] | None:
        sources = [x.get("dataset_source") for x in batched_inputs]
        if all(s is None for s in sources):
            return None
        if any(s is None for s in sources):
            missing = [x.get("file_name", i) for i, x in enumerate(batched_inputs) if x.get("dataset_source") is None]
            raise ValueError(f"Some inputs of the batch have no 'dataset_source': {missing[:5]}")
        return [int(s) for s in sources]

    def _to_unified(self, gt_instances: list[Instances], sources: list[int] | None, batched_inputs) -> None:
        if sources is None:
            raise ValueError("gt_classes_space='dataset' needs a 'dataset_source' in every input dict")
        for instances, source, inputs in zip(gt_instances, sources, batched_inputs):
            if not 0 <= source < len(self.dataset_columns):
                raise ValueError(
                    f"{inputs.get('file_name', '?')}: dataset_source={source} but dataset_columns lists "
                    f"{len(self.dataset_columns)} datasets"
                )
            columns = self.dataset_columns[source].to(instances.gt_classes.device)
            local = instances.gt_classes
            if local.numel() and (int(local.min()) < 0 or int(local.max()) >= len(columns)):
                raise ValueError(
                    f"{inputs.get('file_name', '?')}: gt class ids {local.unique().tolist()} outside the "
                    f"{len(columns)} classes of dataset {source}"
                )
            instances.gt_classes = columns[local]

    def forward(self, batched_inputs: list[dict]):
        """Training: same as :meth:`GeneralizedRCNN.forward` plus the dataset-source hand-off. Inference:
        unchanged (list of dicts with "instances")."""
        if not self.training:
            return self.inference(batched_inputs)

        images = self.preprocess_image(batched_inputs)
        if "instances" not in batched_inputs[0]:
            raise ValueError("ScaleDet training needs 'instances' in every input dict")
        gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
        dataset_sources = self._dataset_sources(batched_inputs)
        if self.gt_classes_space == "dataset":
            self._to_unified(gt_instances, dataset_sources, batched_inputs)

        features = self.backbone(images.tensor)
        if self.proposal_generator is not None:
            proposals, proposal_losses = self.proposal_generator(images, features, gt_instances)
        else:
            if "proposals" not in batched_inputs[0]:
                raise ValueError("No proposal generator and no precomputed 'proposals' in the inputs")
            proposals = [x["proposals"].to(self.device) for x in batched_inputs]
            proposal_losses = {}

        if isinstance(self.roi_heads, (ScaleDetCascadeROIHeads, ScaleDetStandardROIHeads)):
            _, detector_losses = self.roi_heads(
                images, features, proposals, gt_instances, dataset_sources=dataset_sources
            )
        else:
            _, detector_losses = self.roi_heads(images, features, proposals, gt_instances)
        if self.vis_period > 0:
            storage = get_event_storage()
            if storage.iter % self.vis_period == 0:
                self.visualize_training(batched_inputs, proposals)

        losses = {}
        losses.update(detector_losses)
        losses.update(proposal_losses)
        return losses
