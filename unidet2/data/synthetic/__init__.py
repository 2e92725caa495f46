"""Synthetic multi-dataset data in real formats (COCO, LVIS, COCO-panoptic, semantic PNG, ODinW-like sets).

Generate:  python -m unidet2.data.synthetic --out DIR --seed N --preset {test,demo,longtail,panoptic}
Register:  unidet2.data.synthetic.register_synthetic(DIR)  (detectron2 DatasetCatalog / MetadataCatalog)

Objects are coloured, textured shapes (circle, square, triangle, star, ring, cross, ...) on domain-specific
backgrounds; panoptic/semantic scenes add stuff regions (sky, wall, grass, water, ...). Upstream datasets
differ in vocabulary (shared names, synonyms such as "square"/"box", disjoint names) and domain; downstream
("in the wild") sets use unseen names ("ball", "pyramid") and two concepts no upstream set contains.

Presets (generation time on the 2-core dev machine, seed 0):
  test      every format, 128 px: synth_coco (instance, polygons + RLE, gappy category ids), synth_objects
            (detection), synth_signs (instance), synth_lvis (LVIS, 12 classes), synth_panoptic (+ semantic PNGs),
            synth_semantic, synth_boxes (box-only + held-out masks), odinw_toys / odinw_space (downstream).
  demo      synth_coco / synth_objects / synth_signs (400 train + 100 val each, 192-224 px), synth_lvis
            (24 classes), two downstream sets (160 + 60) -- ScaleDet-style multi-dataset training.
  longtail  synth_lvis: 40 colour x shape classes, ~1.3k train / 0.3k val images, 160 px.
  panoptic  synth_panoptic, synth_semantic, synth_boxes (300 train + 60 val each, 160 px) -- DaTaSeg.

LVIS frequency groups use the number of training images holding a category (LVIS semantics), with these
thresholds (rare <= R, common <= C, frequent > C; recorded per dataset in the manifest):
  LVIS v1 reference R=10, C=100;  longtail R=10, C=100;  demo R=5, C=40;  test R=3, C=12.
"""

from .generate import MANIFEST_NAME, generate_synthetic, load_manifest
from .register import register_synthetic
from .specs import PRESETS

__all__ = ["MANIFEST_NAME", "PRESETS", "generate_synthetic", "load_manifest", "register_synthetic"]
