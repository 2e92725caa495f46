"""The stage settings every base detector shares (ScaleDet R-CNN or Deformable-DETR, synthetic or LVIS): the
stage-specific inputs of the model and of the training data, and the schedule in epochs. Each function edits the
given ``model`` and ``dataloader`` config nodes in place; the number of epochs and the learning rates stay in the
stage files (``longtail.epochs``)."""

import copy

from detectron2.config import LazyCall as L
from detectron2.data import build_detection_test_loader

from projects.LongTail.longtail import (
    STEPWISE_REPEAT,
    ExemplarMiningEvaluator,
    head_class_ids,
    load_frozen_teacher,
    records_to_mine,
    step_lr_multiplier,
)
from projects.LongTail.longtail.schedule import RESOLVER

# Head-dominant replay memory per class [I]: all head annotations, 100 per common_10_30, 10 per rare.
HEAD_DOMINANT_MEMORY = {"frequent": None, "common_30_100": None, "common_10_30": 100, "rare": 10}


def _replay_training(dataloader, replay: str, stage: str) -> None:
    dataloader.train.dataset_name = f"${{longtail.dataset}}_{replay}"
    dataloader.train.replay_json = f"${{longtail.mining_dir}}/replay/{replay}.json"
    dataloader.train.base_dataset = "${longtail.dataset}"
    dataloader.train.sampling = "stepwise"
    dataloader.train.group_repeat = STEPWISE_REPEAT[stage]


def mining_stage(model, dataloader, test_mapper, *, tail_dominant_memory, num_workers, flush_every) -> None:
    """Eval-only exemplar mining with the stage-1 model: scores every training annotation and writes the replay
    sets into ``train.output_dir`` (``projects.LongTail.longtail.mining``)."""
    model.output_candidates = True
    model.init_weights = "${longtail.stage1_checkpoint}"
    model.init_weights_hint = "exemplar mining runs the stage-1 model; run `make train-stage1` first"
    dataloader.pop("train")
    dataloader.test = L(build_detection_test_loader)(
        dataset=L(records_to_mine)(
            names="${longtail.dataset}",
            scores_dir="${train.output_dir}/scores",
            synthetic_root="${longtail.synthetic_root}",
        ),
        mapper=test_mapper,
        num_workers=num_workers,
    )
    dataloader.evaluator = L(ExemplarMiningEvaluator)(
        dataset_name="${longtail.dataset}",
        output_dir="${train.output_dir}",
        synthetic_root="${longtail.synthetic_root}",
        threshold=0.5,  # [C]
        depth=500,  # m [C]
        head_dominant_memory=HEAD_DOMINANT_MEMORY,
        tail_dominant_memory=tail_dominant_memory,
        group_boundaries="${longtail.group_boundaries}",
        matcher={"cost_class": 2.0, "cost_bbox": 5.0, "cost_giou": 2.0},  # [C] Deformable-DETR matcher costs
        flush_every=flush_every,
    )


def head_expert_stage(model, dataloader, trainable) -> None:
    """Stage 2: only ``trainable`` (the class-specific modules) fine-tune the stage-1 model on the head-dominant
    replay set with stage-2 step-wise repeat factors."""
    model.init_weights = "${longtail.stage1_checkpoint}"
    model.init_weights_hint = "stage 2 fine-tunes the stage-1 model; run `make train-stage1` first"
    model.trainable_parameters = list(trainable)
    _replay_training(dataloader, "head_dominant", "stage2")


def unified_stage(model, dataloader, trainable) -> None:
    """Stage 3: ``trainable`` train on the tail-dominant replay set with stage-3 step-wise repeat factors,
    distilled from the frozen head expert, which also initialises the student [I, as the released code]."""
    teacher = copy.deepcopy(model)
    model.teacher = L(load_frozen_teacher)(model=teacher, checkpoint="${longtail.head_expert_checkpoint}")
    model.head_classes = L(head_class_ids)(
        dataset_name="${longtail.dataset}",
        synthetic_root="${longtail.synthetic_root}",
        boundaries="${longtail.group_boundaries}",
    )
    model.init_weights = "${longtail.head_expert_checkpoint}"
    model.init_weights_hint = "stage 3 starts from the head expert; run `make train-stage2` first"
    model.trainable_parameters = list(trainable)
    _replay_training(dataloader, "tail_dominant", "stage3")


def epoch_schedule(dataloader, stage: str, *, drops=(), warmup_iters: int = 0):
    """The stage's schedule in epochs: ``(train.max_iter, lr_multiplier)``.

    ``train.max_iter`` is ``ceil(longtail.epochs.<stage> x images per epoch / batch)``, the images per epoch
    counting the repeats of the stage's sampler as the released code does (``projects.LongTail.longtail
    .schedule``); the loader logs the resulting count. The lr drops x0.1 at each fraction in ``drops`` of the
    schedule (0.8 = the released 40 of 50 epochs). ``train.max_iter=N`` overrides it.
    """
    dataloader.train.epochs = f"${{longtail.epochs.{stage}}}"
    dataloader.train.max_iter = "${train.max_iter}"
    max_iter = f"${{{RESOLVER}:${{longtail.epochs.{stage}}},${{dataloader.train}}}}"
    lr_multiplier = L(step_lr_multiplier)(max_iter="${train.max_iter}", drops=list(drops), warmup_iters=warmup_iters)
    return max_iter, lr_multiplier
