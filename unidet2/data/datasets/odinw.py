"""ODinW-13: the 13 RoboFlow/Open datasets GLIP evaluates on, in GLIP's folder layout and splits.

Each dataset is registered as ``odinw_<short>_{train,val,test}`` (plus ``minival`` for EgoHands and
Vehicles) and ``odinw_<short>_train_<shots>_<seed>`` for GLIP's few-shot splits (shots 1/3/5/10, seeds
3/30/300). The evaluation split GLIP reports (``val``, or ``minival`` for EgoHands and Vehicles) is
``ODINW13_EVAL_DATASETS``; the benchmark score is the unweighted mean of the 13 box APs.

Class names are GLIP's ``OVERRIDE_CATEGORY`` lists (ids 1..K); ``vocabulary`` holds them normalised for
prompting (lower case, '-' and '_' -> ' '), ``raw_class_names`` keeps them verbatim.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from .coco import load_coco_instances
from .common import contiguous_id_map, read_json_categories, register_lazy_dataset, resolve_path

__all__ = [
    "ODINW13",
    "ODINW13_EVAL_DATASETS",
    "ODINW13_TRAIN_DATASETS",
    "ODINW_FEWSHOT_SEEDS",
    "ODINW_FEWSHOT_SHOTS",
    "OdinwDataset",
    "normalize_odinw_class_name",
    "odinw_dataset_names",
    "register_all_odinw",
]

ODINW_FEWSHOT_SHOTS = (1, 3, 5, 10)
ODINW_FEWSHOT_SEEDS = (3, 30, 300)
_ANNOTATIONS = "annotations_without_background.json"


@dataclass(frozen=True)
class OdinwDataset:
    """One ODinW dataset in GLIP's layout.

    Attributes:
        short_name: name used in unidet2 dataset names (``odinw_<short_name>_<split>``).
        glip_config: GLIP's ``configs/odinw_13`` file it mirrors.
        folder: dataset folder under ``<root>``.
        classes: raw class names, ids 1..K.
        eval_split: split GLIP evaluates on ("val" or "minival").
        split_folders: split -> subfolder of ``folder`` holding images and ``annotations_without_background.json``.
        flat_export: True for the "export" layout (pistols): images and ``<split>_annotations_without_background.json``
            all in ``folder``.
    """

    short_name: str
    glip_config: str
    folder: str
    classes: tuple[str, ...]
    eval_split: str = "val"
    split_folders: tuple[tuple[str, str], ...] = (("train", "train"), ("val", "valid"), ("test", "test"))
    flat_export: bool = False

    def split_paths(self, split: str) -> tuple[str, str]:
        """(image folder, json) relative to the root for ``train``/``val``/``test``/``minival``."""
        if self.flat_export:
            return self.folder, f"{self.folder}/{split}_{_ANNOTATIONS}"
        subfolder = dict(self.split_folders)[split]
        return f"{self.folder}/{subfolder}", f"{self.folder}/{subfolder}/{_ANNOTATIONS}"

    def fewshot_paths(self, shots: int, seed: int) -> tuple[str, str]:
        """(image folder, json) of GLIP's ``train_<shots>_<seed>`` split."""
        image_dir, _ = self.split_paths("train")
        return image_dir, f"{image_dir}/fewshot_train_shot{shots}_seed{seed}.json"

    @property
    def splits(self) -> tuple[str, ...]:
        return ("train", "val", "test") if self.flat_export else tuple(s for s, _ in self.split_folders)


_WITH_MINIVAL = (("train", "train"), ("val", "valid"), ("test", "test"), ("minival", "mini_val"))

ODINW13: tuple[OdinwDataset, ...] = (
    OdinwDataset(
        "pascalvoc",
        "PascalVOC.yaml",
        "odinw/PascalVOC",
        (
            "aeroplane",
            "bicycle",
            "bird",
            "boat",
            "bottle",
            "bus",
            "car",
            "cat",
            "chair",
            "cow",
            "diningtable",
            "dog",
            "horse",
            "motorbike",
            "person",
            "pottedplant",
            "sheep",
            "sofa",
            "train",
            "tvmonitor",
        ),
        # GLIP's PascalVOC config points its test split at the validation folder.
        split_folders=(("train", "train"), ("val", "valid"), ("test", "valid")),
    ),  # fmt: skip
    OdinwDataset(
        "aerialdrone",
        "AerialMaritimeDrone_large.yaml",
        "odinw/AerialMaritimeDrone/large",
        ("boat", "car", "dock", "jetski", "lift"),
    ),
    OdinwDataset(
        "aquarium",
        "Aquarium_Aquarium_Combined.v2-raw-1024.coco.yaml",
        "odinw/Aquarium/Aquarium Combined.v2-raw-1024.coco",
        ("fish", "jellyfish", "penguin", "puffin", "shark", "starfish", "stingray"),
    ),
    OdinwDataset("rabbits", "CottontailRabbits.yaml", "odinw/CottontailRabbits", ("Cottontail-Rabbit",)),
    OdinwDataset(
        "egohands",
        "EgoHands_generic.yaml",
        "odinw/EgoHands/generic",
        ("hand",),
        eval_split="minival",
        split_folders=_WITH_MINIVAL,
    ),
    OdinwDataset(
        "mushrooms",
        "NorthAmericaMushrooms_North_American_Mushrooms.v1-416x416.coco.yaml",
        "odinw/NorthAmericaMushrooms/North American Mushrooms.v1-416x416.coco",
        ("CoW", "chanterelle"),
    ),
    OdinwDataset("packages", "Packages_Raw.yaml", "odinw/Packages/Raw", ("package",)),
    OdinwDataset("raccoon", "Raccoon_Raccoon.v2-raw.coco.yaml", "odinw/Raccoon/Raccoon.v2-raw.coco", ("raccoon",)),
    OdinwDataset(
        "shellfish", "ShellfishOpenImages_raw.yaml", "odinw/ShellfishOpenImages/raw", ("Crab", "Lobster", "Shrimp")
    ),
    OdinwDataset(
        "vehicles",
        "VehiclesOpenImages_416x416.yaml",
        "odinw/VehiclesOpenImages/416x416",
        ("Ambulance", "Bus", "Car", "Motorcycle", "Truck"),
        eval_split="minival",
        split_folders=_WITH_MINIVAL,
    ),
    OdinwDataset("pistols", "pistols_export.yaml", "odinw/pistols/export", ("pistol",), flat_export=True),
    OdinwDataset("pothole", "pothole.yaml", "odinw/pothole", ("pothole",)),
    OdinwDataset("thermal", "thermalDogsAndPeople.yaml", "odinw/thermalDogsAndPeople", ("dog", "person")),
)

ODINW13_EVAL_DATASETS = tuple(f"odinw_{d.short_name}_{d.eval_split}" for d in ODINW13)
ODINW13_TRAIN_DATASETS = tuple(f"odinw_{d.short_name}_train" for d in ODINW13)


def normalize_odinw_class_name(name: str) -> str:
    """'Cottontail-Rabbit' -> 'cottontail rabbit' (lower case, '-' and '_' -> ' ')."""
    return " ".join(name.lower().replace("-", " ").replace("_", " ").split())


def odinw_dataset_names(dataset: OdinwDataset) -> list[str]:
    """All registered names of one ODinW dataset (splits, then few-shot splits)."""
    names = [f"odinw_{dataset.short_name}_{split}" for split in dataset.splits]
    names += [
        f"odinw_{dataset.short_name}_train_{shots}_{seed}"
        for shots in ODINW_FEWSHOT_SHOTS
        for seed in ODINW_FEWSHOT_SEEDS
    ]
    return names


def _layout(dataset: OdinwDataset) -> str:
    if dataset.flat_export:
        return (
            f"<root>/{dataset.folder}/*.jpg with <root>/{dataset.folder}/{{train,val,test}}_{_ANNOTATIONS} "
            "(GLIP's ODinW download)"
        )
    folders = ",".join(folder for _, folder in dataset.split_folders)
    return f"<root>/{dataset.folder}/{{{folders}}}/ holding the images and {_ANNOTATIONS} (GLIP's ODinW download)"


def _load_odinw(root: str | None, dataset: OdinwDataset, image_dir: str, json_rel: str) -> list[dict]:
    # GLIP overrides the json's category names with its own list; do the same, but only for a json
    # with the same number of classes (a name difference is logged).
    return load_coco_instances(
        resolve_path(root, json_rel),
        resolve_path(root, image_dir),
        layout=_layout(dataset),
        expected_class_names=list(dataset.classes),
        on_class_mismatch="warn",
    )


def _odinw_id_map(root: str | None, dataset: OdinwDataset, json_rel: str) -> dict[int, int]:
    return contiguous_id_map(read_json_categories(resolve_path(root, json_rel), _layout(dataset)))


def register_all_odinw(root: str | None = None) -> None:
    """Register the 13 ODinW datasets (task detection, evaluator "coco")."""
    for dataset in ODINW13:
        entries = [(split, *dataset.split_paths(split)) for split in dataset.splits]
        entries += [
            (f"train_{shots}_{seed}", *dataset.fewshot_paths(shots, seed))
            for shots in ODINW_FEWSHOT_SHOTS
            for seed in ODINW_FEWSHOT_SEEDS
        ]
        for split, image_dir, json_rel in entries:
            register_lazy_dataset(
                f"odinw_{dataset.short_name}_{split}",
                "detection",
                partial(_load_odinw, root, dataset, image_dir, json_rel),
                metadata={
                    "vocabulary": [normalize_odinw_class_name(c) for c in dataset.classes],
                    "raw_class_names": list(dataset.classes),
                    "thing_classes": list(dataset.classes),
                    "evaluator_type": "coco",
                    "odinw_dataset": dataset.short_name,
                    "odinw_eval_split": dataset.eval_split,
                    "glip_config": f"configs/odinw_13/{dataset.glip_config}",
                },
                lazy_metadata={
                    "thing_dataset_id_to_contiguous_id": partial(_odinw_id_map, root, dataset, json_rel),
                    "json_file": partial(resolve_path, root, json_rel),
                    "image_root": partial(resolve_path, root, image_dir),
                },
                on_conflict="replace",
            )
