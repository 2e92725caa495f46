"""Tiny DaTaSeg for CPU runs: the R50 model (``dataseg_r50_model.py``) with only sizes and inputs changed: narrow
BatchNorm ResNet (16..128 channels), 64-d pixel decoder with 2 deformable encoder layers, 3 masked-attention decoder
layers (one round over the 3 levels), 16 queries, 64-d hidden width, 1024 sampled points.

``train_vocabularies`` are the text embeddings (MiniLM, 384-d, with the metadata synonyms) of the training
datasets' class names; the classifier starts with the first dataset's vocabulary and is given each test dataset's
by the engine (``dataloader.vocabulary`` must name the same encoder).
"""

from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec

from projects.DaTaSeg.dataseg import dataset_vocabularies
from unidet2.modeling.backbone import build_small_resnet

from .dataseg_r50_model import model

HIDDEN_DIM = 64
WIDTHS = (16, 32, 64, 128)
NUM_POINTS = 1024

model.backbone = L(build_small_resnet)(stem_channels=16, widths=WIDTHS, blocks_per_stage=(1, 1, 1, 1), norm="BN")
model.pixel_decoder.input_shape = {
    f"res{k + 2}": L(ShapeSpec)(channels=w, stride=2 ** (k + 2)) for k, w in enumerate(WIDTHS)
}
model.pixel_decoder.update(
    hidden_dim=HIDDEN_DIM, mask_dim=HIDDEN_DIM, num_encoder_layers=2, ffn_dim=2 * HIDDEN_DIM, num_heads=4
)
model.transformer_decoder.update(
    in_channels=HIDDEN_DIM,
    hidden_dim=HIDDEN_DIM,
    mask_dim=HIDDEN_DIM,
    num_queries=16,
    num_heads=4,
    ffn_dim=2 * HIDDEN_DIM,
    num_layers=3,
)
model.transformer_decoder.classifier.input_dim = HIDDEN_DIM
model.criterion.num_points = NUM_POINTS
model.criterion.matcher.num_points = NUM_POINTS
model.train_vocabularies = L(dataset_vocabularies)(dataset_names=[], encoder="minilm", prompts=None)
# BGR; from-scratch BatchNorm backbone: unit-variance inputs
model.pixel_mean = [103.53, 116.28, 123.675]
model.pixel_std = [57.375, 57.120, 58.395]
