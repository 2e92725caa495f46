"""Tiny Co-Deformable-DETR with text-embedding classifiers on three synthetic upstream sets in one concatenated
label space (synth_coco 6 + synth_objects 7 + synth_signs 7 = 20 labels), trained with ScaleDet's hard (focal
form) and soft label losses on the DETR head; the aux heads classify with text embeddings too.

    python -m unidet2.data.synthetic --out datasets/synthetic --preset test
    python tools/build_text_embeddings.py --datasets synth_coco_train synth_objects_train synth_signs_train \
        --out datasets/synthetic/metadata/codetr_synth3_minilm.npy \
        --label-space datasets/synthetic/metadata/codetr_synth3_labels.json
    python tools/train_net.py --config-file projects/CoDETR/configs/co_deformable_detr_text_synthetic.py

Evaluation sets each test dataset's own vocabulary (``dataloader.vocabulary``: same encoder as the embeddings).
"""

from detectron2.config import LazyCall as L
from omegaconf import OmegaConf

from projects.CoDETR.codetr import DetrClassificationLoss
from unidet2.data.build import build_multi_dataset_train_loader
from unidet2.data.label_space import UnifiedLabelSpace
from unidet2.modeling.label_assignment_losses import dataset_columns_from_label_space
from unidet2.modeling.similarity import VocabularySimilarity
from unidet2.modeling.text_classifier import TextEmbeddingClassifier

from .co_deformable_detr_synthetic import dataloader, dataset_registration, lr_multiplier, model, optimizer, train

TRAIN_DATASETS = ["synth_coco_train", "synth_objects_train", "synth_signs_train"]
label_space = {
    "file": "datasets/synthetic/metadata/codetr_synth3_labels.json",
    "embeddings_file": "datasets/synthetic/metadata/codetr_synth3_minilm.npy",
    "temperature": 0.05,
}

model.num_classes = None
model.class_embed.classifier = L(TextEmbeddingClassifier)(
    input_dim=64, embeddings="${label_space.embeddings_file}", temperature="${label_space.temperature}",
    use_bias=True, bias_prior_prob=0.01,
)
model.aux_heads[0].classifier = L(TextEmbeddingClassifier)(  # Faster R-CNN: softmax with a learned background
    input_dim=128, embeddings="${label_space.embeddings_file}", temperature="${label_space.temperature}",
    background="learnable",
)
model.aux_heads[1].classifier = L(TextEmbeddingClassifier)(  # ATSS: sigmoid, no background
    input_dim=64, embeddings="${label_space.embeddings_file}", temperature="${label_space.temperature}",
    use_bias=True, bias_prior_prob=0.01,
)
model.criterion.classification_loss = L(DetrClassificationLoss)(loss_type="focal", soft_loss_weight=1.0)
# Ŝ of ScaleDet: row-wise min-max of the embeddings' cosines, not symmetrised; follows set_vocabulary.
model.criterion.label_similarity = L(VocabularySimilarity)(normalization="minmax_row", symmetrize=False)
model.criterion.dataset_columns = L(dataset_columns_from_label_space)(
    label_space=L(UnifiedLabelSpace.load_json)(path="${label_space.file}"), dataset_names=TRAIN_DATASETS
)
model.criterion.partitioned_negatives = False

train_mapper = dataloader.train.mapper
train_mapper.label_map = L(UnifiedLabelSpace.load_json)(path="${label_space.file}")
dataloader.train = L(build_multi_dataset_train_loader)(
    dataset_names=TRAIN_DATASETS,
    mapper=train_mapper,
    ratios=[1.0, 1.0, 1.0],
    total_batch_size=4,
    num_workers=0,
)
dataloader.vocabulary = OmegaConf.create({"encoder": "minilm"})
train["output_dir"] = "./output/co_deformable_detr_text_synthetic"
