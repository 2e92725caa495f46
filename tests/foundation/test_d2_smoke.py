"""detectron2 works on this stack: model-zoo models train and infer on the CPU, checkpoints round-trip under
torch >= 2.6, the evaluators and the repeat-factor loader run on small files written here (numpy 2)."""

import json
import logging

import numpy as np
import pytest
import torch
from detectron2 import model_zoo
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_train_loader
from detectron2.data.common import MapDataset
from detectron2.data.datasets import register_coco_instances
from detectron2.data.detection_utils import annotations_to_instances
from detectron2.data.samplers import RepeatFactorTrainingSampler
from detectron2.engine import hooks
from detectron2.evaluation import COCOEvaluator, LVISEvaluator, SemSegEvaluator
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Boxes, Instances, PolygonMasks, polygons_to_bitmask
from detectron2.utils.events import EventStorage
from PIL import Image, ImageDraw

SQUARE, TRIANGLE = 1, 2


def write_tiny_coco(root, num_images=6, size=96):
    """Images with one square (category 1) and, on even images, one triangle (category 2).

    Returns the json path. Polygons are exact, so masks, boxes and areas agree.
    """
    root.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    rng = np.random.default_rng(0)
    for image_id in range(1, num_images + 1):
        image = Image.new("RGB", (size, size), (40, 40, 40))
        draw = ImageDraw.Draw(image)
        x, y = (int(v) for v in rng.integers(5, 40, 2))
        square = [x, y, x + 30, y, x + 30, y + 30, x, y + 30]
        draw.polygon(square, fill=(220, 60, 60))
        annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": SQUARE,
                            "bbox": [x, y, 30, 30], "area": 900.0, "iscrowd": 0, "segmentation": [square]})
        if image_id % 2 == 0:
            triangle = [60, 60, 90, 60, 60, 90]
            draw.polygon(triangle, fill=(60, 200, 60))
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": TRIANGLE,
                                "bbox": [60, 60, 30, 30], "area": 450.0, "iscrowd": 0,
                                "segmentation": [triangle]})
        image.save(root / f"{image_id}.png")
        images.append({"id": image_id, "file_name": f"{image_id}.png", "width": size, "height": size})
    categories = [
        # the LVIS fields let the same file serve LVISEvaluator
        {"id": SQUARE, "name": "square", "frequency": "f", "image_count": num_images, "synset": "square.n.01"},
        {"id": TRIANGLE, "name": "triangle", "frequency": "r", "image_count": num_images // 2,
         "synset": "triangle.n.01"},
    ]
    for image in images:
        image["neg_category_ids"] = []
        image["not_exhaustive_category_ids"] = []
    path = root / "annotations.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


@pytest.fixture(scope="module")
def tiny_coco(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_coco")
    json_path = write_tiny_coco(root)
    name = f"unidet2_test_tiny_coco_{root.name}"
    register_coco_instances(name, {}, str(json_path), str(root))
    yield name, json_path, root
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def small_cfg(config_path, num_classes=2):
    """A model-zoo config made small and safe for random initialisation on the CPU."""
    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file(config_path))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""  # no download here
    cfg.MODEL.RESNETS.NORM = "GN"  # random-init FrozenBN ResNets blow up (losses 1e2-1e3)
    cfg.MODEL.FPN.NORM = "GN"
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = num_classes
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 64
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = 200
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 100
    cfg.INPUT.MIN_SIZE_TRAIN = (96,)
    cfg.INPUT.MAX_SIZE_TRAIN = 128
    cfg.INPUT.MIN_SIZE_TEST = 96
    cfg.INPUT.MAX_SIZE_TEST = 128
    return cfg


def _batch(with_masks):
    image = torch.randint(0, 255, (3, 96, 128), dtype=torch.uint8)
    instances = Instances((96, 128))
    instances.gt_boxes = Boxes(torch.tensor([[10.0, 10.0, 50.0, 60.0], [60.0, 20.0, 120.0, 90.0]]))
    instances.gt_classes = torch.tensor([0, 1])
    if with_masks:
        masks = torch.zeros(2, 96, 128, dtype=torch.bool)
        masks[0, 10:60, 10:50] = True
        masks[1, 20:90, 60:120] = True
        instances.gt_masks = BitMasks(masks)
    return [{"image": image, "instances": instances, "height": 96, "width": 128}]


@pytest.mark.parametrize(
    "config_path, with_masks",
    [("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml", False),
     ("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml", True)],
)
def test_model_zoo_model_trains_one_step_and_infers(config_path, with_masks):
    torch.manual_seed(0)
    model = build_model(small_cfg(config_path))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    before = {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}
    model.train()
    with EventStorage(0):
        losses = model(_batch(with_masks))
    expected = {"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"} | ({"loss_mask"} if with_masks else set())
    assert set(losses) == expected
    for name, value in losses.items():
        assert torch.isfinite(value) and 0 <= value.item() < 10, (name, value)
    sum(losses.values()).backward()
    optimizer.step()
    changed = [k for k, v in model.named_parameters() if v.requires_grad and not torch.equal(v, before[k])]
    assert len(changed) > 0.9 * len(before)

    model.eval()
    with torch.no_grad():
        (output,) = model([{"image": _batch(False)[0]["image"], "height": 192, "width": 256}])
    instances = output["instances"]
    assert instances.image_size == (192, 256)  # rescaled to the requested size
    assert instances.pred_boxes.tensor.shape[1] == 4 and len(instances) <= 100
    if with_masks and len(instances):
        assert instances.pred_masks.shape[1:] == (192, 256)


def test_checkpoint_round_trip_with_scheduler_state(tmp_path):
    """DetectionCheckpointer under torch's weights_only default, and torch 2 schedulers (whose state v0.6
    silently dropped) saved and restored through detectron2's LRScheduler hook."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    hook = hooks.LRScheduler(optimizer, scheduler)
    checkpointer = DetectionCheckpointer(model, str(tmp_path), optimizer=optimizer, scheduler=hook)
    checkpointer.save("model_0000005", iteration=5)

    restored = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    new_optimizer = torch.optim.SGD(restored.parameters(), lr=0.1)
    new_scheduler = torch.optim.lr_scheduler.StepLR(new_optimizer, step_size=2, gamma=0.5)
    new_hook = hooks.LRScheduler(new_optimizer, new_scheduler)
    extra = DetectionCheckpointer(restored, str(tmp_path), optimizer=new_optimizer, scheduler=new_hook).resume_or_load(
        str(tmp_path / "model_0000005.pth"), resume=True
    )
    assert extra["iteration"] == 5
    for a, b in zip(model.state_dict().values(), restored.state_dict().values()):
        assert torch.equal(a, b)
    assert new_scheduler.last_epoch == 5
    assert new_optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**2)


def _oracle_predictions(dataset_dicts):
    """Per-image model outputs equal to the ground truth (score 1): AP must be 100."""
    outputs = []
    for record in dataset_dicts:
        instances = annotations_to_instances(record["annotations"], (record["height"], record["width"]),
                                             mask_format="bitmask")
        predictions = Instances(instances.image_size)
        predictions.pred_boxes = instances.gt_boxes
        predictions.pred_classes = instances.gt_classes
        predictions.scores = torch.ones(len(instances))
        predictions.pred_masks = instances.gt_masks.tensor
        outputs.append({"instances": predictions})
    return outputs


@pytest.mark.parametrize("evaluator_class", [COCOEvaluator, LVISEvaluator])
def test_instance_evaluators_give_100_ap_on_oracle_predictions(tiny_coco, tmp_path, evaluator_class):
    name, _, _ = tiny_coco
    dataset_dicts = DatasetCatalog.get(name)
    evaluator = evaluator_class(name, tasks=("bbox", "segm"), distributed=False, output_dir=str(tmp_path))
    evaluator.reset()
    for record, output in zip(dataset_dicts, _oracle_predictions(dataset_dicts)):
        evaluator.process([{"image_id": record["image_id"]}], [output])
    results = evaluator.evaluate()
    assert results["bbox"]["AP"] == pytest.approx(100.0)
    assert results["segm"]["AP"] == pytest.approx(100.0)


def test_coco_evaluator_fast_path_equals_pycocotools(tiny_coco, tmp_path):
    name, _, _ = tiny_coco
    dataset_dicts = DatasetCatalog.get(name)
    gen = torch.Generator().manual_seed(0)
    aps = []
    for fast in (True, False):
        evaluator = COCOEvaluator(name, tasks=("bbox",), distributed=False, use_fast_impl=fast)
        evaluator.reset()
        for record, output in zip(dataset_dicts, _oracle_predictions(dataset_dicts)):
            predictions = output["instances"]
            # the same jitter and scores for both paths: a non-trivial AP
            gen.manual_seed(record["image_id"])
            predictions.pred_boxes = Boxes(predictions.pred_boxes.tensor + torch.randn(len(predictions), 4,
                                                                                     generator=gen) * 4)
            predictions.scores = torch.rand(len(predictions), generator=gen)
            evaluator.process([{"image_id": record["image_id"]}], [{"instances": predictions}])
        aps.append(evaluator.evaluate()["bbox"])
    assert 5 < aps[0]["AP"] < 99
    for key in aps[0]:
        assert aps[0][key] == pytest.approx(aps[1][key], abs=1e-9, nan_ok=True), key


def test_train_loader_with_repeat_factor_sampler(tiny_coco, caplog):
    name, _, _ = tiny_coco
    dataset_dicts = DatasetCatalog.get(name)
    # category frequencies: square in 6/6 images, triangle in 3/6; t = 0.9:
    # r(triangle) = max(1, sqrt(0.9 / 0.5)) = 1.3416, r(square) = 1; an image takes its classes' maximum
    factors = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(dataset_dicts, 0.9)
    expected = [np.sqrt(0.9 / 0.5) if record["image_id"] % 2 == 0 else 1.0 for record in dataset_dicts]
    np.testing.assert_allclose(factors.numpy(), expected, rtol=1e-6)

    cfg = small_cfg("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml")
    cfg.DATASETS.TRAIN = (name,)
    cfg.DATALOADER.SAMPLER_TRAIN = "RepeatFactorTrainingSampler"
    cfg.DATALOADER.REPEAT_THRESHOLD = 0.9
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.SOLVER.IMS_PER_BATCH = 2
    with caplog.at_level(logging.INFO, logger="detectron2"):
        loader = build_detection_train_loader(cfg)
        batch = next(iter(loader))
    assert len(batch) == 2
    for item in batch:
        assert item["image"].dtype == torch.uint8 and item["image"].shape[0] == 3
        assert len(item["instances"]) in (1, 2) and item["instances"].has("gt_masks")
    # numpy 2: the per-class instance histogram is logged again (it vanished silently on np.int)
    assert "Distribution of instances among all 2 categories" in caplog.text


def test_map_dataset_retries_after_none():
    """Python 3.11: MapDataset's retry path used random.sample on a set."""
    dataset = MapDataset(list(range(10)), lambda x: None if x == 3 else x)
    values = [dataset[i] for i in range(10)]
    assert values[3] != 3 and values[3] in range(10)
    assert values[:3] == [0, 1, 2]


def test_polygon_to_bitmask_conversion_matches_pycocotools():
    from pycocotools import mask as mask_util

    polygon = [10.0, 10.0, 40.0, 12.0, 30.0, 35.0, 12.0, 30.0]
    bitmask = polygons_to_bitmask([np.array(polygon)], 48, 64)
    rle = mask_util.frPyObjects([polygon], 48, 64)
    expected = mask_util.decode(mask_util.merge(rle)).astype(bool)
    assert bitmask.dtype == bool and np.array_equal(bitmask, expected)
    masks = PolygonMasks([[np.array(polygon)]])
    assert masks.area().item() == pytest.approx(Polygon_area(polygon))
    assert torch.equal(BitMasks.from_polygon_masks(masks, 48, 64).tensor[0], torch.from_numpy(expected))


def Polygon_area(flat):
    x, y = np.array(flat[0::2]), np.array(flat[1::2])
    return 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))


def test_sem_seg_evaluator_miou(tmp_path):
    """Two classes on a 4x4 image; mIoU computed by hand."""
    gt = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1], [255, 255, 1, 1]], dtype=np.uint8)
    Image.fromarray(gt).save(tmp_path / "gt.png")
    name = "unidet2_test_semseg"
    DatasetCatalog.register(name, lambda: [{"file_name": "x.png", "sem_seg_file_name": str(tmp_path / "gt.png")}])
    MetadataCatalog.get(name).set(stuff_classes=["a", "b"], ignore_label=255, evaluator_type="sem_seg")
    try:
        evaluator = SemSegEvaluator(name, distributed=False)
        evaluator.reset()
        prediction = np.array([[0, 1, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1], [1, 1, 1, 1]])
        logits = torch.nn.functional.one_hot(torch.from_numpy(prediction), 2).permute(2, 0, 1).float()
        evaluator.process([{"file_name": "x.png"}], [{"sem_seg": logits}])
        result = evaluator.evaluate()["sem_seg"]
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    # class 0: tp 5, gt 6, pred 5 -> IoU 5/6; class 1: tp 8, gt 8, pred 9 (ignored pixels do not count)
    assert result["IoU-a"] == pytest.approx(100 * 5 / 6)
    assert result["IoU-b"] == pytest.approx(100 * 8 / 9)
    assert result["mIoU"] == pytest.approx(100 * (5 / 6 + 8 / 9) / 2)
