"""timm's Swin Transformer as a detectron2 backbone (ScaleDet's and Co-DETR's Swin configs).

The wrapper reuses timm's implementation (pinned in requirements.txt) instead of copying Swin code as
Detic does: timm's Swin pads windows for any input size (``strict_img_size=False``) and exposes NCHW
multi-scale features through ``forward_intermediates``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import Backbone

__all__ = ["TimmSwinBackbone"]


class TimmSwinBackbone(Backbone):
    """Swin Transformer from timm as a detectron2 backbone with outputs "res2".."res5" (strides 4..32).

    Pretrained ImageNet weights: ``pretrained=True`` downloads timm's (needs network), or
    ``pretrained_file`` loads a local timm-format checkpoint. Detectron2 checkpoints of the whole detector
    load as usual (parameters live under ``backbone.bottom_up.model.*`` when wrapped in an FPN).
    """

    _STAGE_NAMES = ("res2", "res3", "res4", "res5")

    def __init__(
        self,
        model_name: str = "swin_base_patch4_window7_224",
        *,
        out_features: Sequence[str] = ("res2", "res3", "res4", "res5"),
        pretrained: bool = False,
        pretrained_file: str | None = None,
        drop_path_rate: float = 0.2,
        **timm_kwargs,
    ):
        """
        Args:
            model_name: a timm Swin model name, e.g. "swin_base_patch4_window12_384" (Swin-B, IN-22k) or
                "swin_large_patch4_window12_384" (Swin-L, IN-22k).
            out_features: subset of "res2".."res5".
            pretrained: load timm's pretrained weights (downloads).
            pretrained_file: local checkpoint for timm (``pretrained_cfg_overlay=dict(file=...)``).
            drop_path_rate: stochastic depth rate.
            timm_kwargs: overrides for the timm constructor (embed_dim, depths, num_heads, window_size, ...).
        """
        super().__init__()
        import timm  # local import: only Swin configs need timm

        unknown = [f for f in out_features if f not in self._STAGE_NAMES]
        if unknown:
            raise ValueError(f"Unknown out_features {unknown}; expected a subset of {self._STAGE_NAMES}")
        if pretrained_file is not None:
            pretrained = True
            timm_kwargs["pretrained_cfg_overlay"] = {"file": pretrained_file}
        self.model = timm.create_model(
            model_name,
            pretrained=pretrained,
            num_classes=0,
            strict_img_size=False,
            drop_path_rate=drop_path_rate,
            **timm_kwargs,
        )
        self._indices = [self._STAGE_NAMES.index(f) for f in out_features]
        # The classification norm/head are not used by detection; dropping them avoids unused parameters
        # (which DDP would otherwise need find_unused_parameters=True for).
        self.model.prune_intermediate_layers(self._indices, prune_norm=True, prune_head=True)
        feature_info = self.model.feature_info
        self._out_features = list(out_features)
        self._out_feature_channels = {f: int(feature_info[i]["num_chs"]) for f, i in zip(out_features, self._indices)}
        self._out_feature_strides = {f: int(feature_info[i]["reduction"]) for f, i in zip(out_features, self._indices)}

    @property
    def size_divisibility(self) -> int:
        return 32

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """
        Args:
            x: (B, 3, H, W) normalised images.

        Returns:
            {name: (B, C_name, H / stride, W / stride)} for each of ``out_features``.
        """
        features = self.model.forward_intermediates(x, indices=self._indices, intermediates_only=True)
        return dict(zip(self._out_features, features))

    def output_shape(self) -> dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(channels=self._out_feature_channels[name], stride=self._out_feature_strides[name])
            for name in self._out_features
        }
