"""Unified label space: label maps, json round trips, validation, and the label similarity matrix."""

import json

import numpy as np
import pytest

from unidet2.data.label_space import UnifiedLabelSpace, label_similarity, normalize_name

COCO = ("coco", ["person", "car", "traffic_light", "dog"])
O365 = ("o365", ["Person", "bus", "traffic light", "cat", "dog"], [["human"], [], ["stoplight"], ["kitty"], []])
LVIS = ("lvis", ["person", "car", "bicycle"])
DATASETS = [COCO, O365, LVIS]


@pytest.fixture(params=["concat", "merge_by_name"])
def space(request):
    return UnifiedLabelSpace(DATASETS, mode=request.param)


def test_concat_is_scaledet_flattening():
    space = UnifiedLabelSpace(DATASETS)
    assert space.mode == "concat"
    assert space.num_classes == len(space) == 4 + 5 + 3
    assert space.offsets == {"coco": 0, "o365": 4, "lvis": 9}
    assert space.names == COCO[1] + O365[1] + LVIS[1]  # duplicates ("person" x3, "car" x2) are kept
    np.testing.assert_array_equal(space.label_map["o365"], [4, 5, 6, 7, 8])
    np.testing.assert_array_equal(space.label_map["lvis"], [9, 10, 11])
    for name in space.dataset_names:
        np.testing.assert_array_equal(space.dataset_inds[name], space.label_map[name])
    masks = space.dataset_masks
    assert masks.shape == (3, 12) and masks.dtype == bool
    np.testing.assert_array_equal(masks.sum(axis=1), [4, 5, 3])
    np.testing.assert_array_equal(masks.sum(axis=0), np.ones(12))  # every entry belongs to exactly one dataset
    assert space.synonyms[5] == [] and space.synonyms[4] == ["human"]
    assert space.owners(10) == (("lvis", 1),)


def test_merge_by_name_shares_entries():
    space = UnifiedLabelSpace(DATASETS, mode="merge_by_name")
    assert space.names == ["person", "car", "traffic_light", "dog", "bus", "cat", "bicycle"]
    np.testing.assert_array_equal(space.label_map["coco"], [0, 1, 2, 3])
    np.testing.assert_array_equal(space.label_map["o365"], [0, 4, 2, 5, 3])
    np.testing.assert_array_equal(space.label_map["lvis"], [0, 1, 6])
    np.testing.assert_array_equal(space.dataset_inds["o365"], [0, 2, 3, 4, 5])  # sorted, UniDet semantics
    np.testing.assert_array_equal(space.dataset_mask("lvis"), [1, 1, 0, 0, 0, 0, 1])
    assert space.owners(0) == (("coco", 0), ("o365", 0), ("lvis", 0))
    # synonyms: other spellings that normalise differently, plus dataset synonyms; "Person" adds nothing
    assert space.synonyms[0] == ["human"]
    assert space.synonyms[2] == ["stoplight"]
    with pytest.raises(ValueError, match="only defined for mode='concat'"):
        _ = space.offsets
    assert normalize_name(" Traffic__Light ") == "traffic light"


def test_round_trip_local_unified_local(space):
    for index, name in enumerate(space.dataset_names):
        num_local = space.num_classes_of(name)
        local = np.arange(num_local)
        unified = space.to_unified(name, local)
        assert unified.dtype == np.int64 and unified.shape == (num_local,)
        np.testing.assert_array_equal(space.to_local(name, unified), local)
        np.testing.assert_array_equal(space.to_unified(index, local), unified)  # by dataset_source index
        for local_id in range(num_local):
            unified_id = space.to_unified(name, local_id)
            assert isinstance(unified_id, int)
            assert space.to_local(name, unified_id) == local_id
            assert (name, local_id) in space.owners(unified_id)
            assert space.names[unified_id] == space.dataset(name).vocabulary[local_id] or (
                normalize_name(space.names[unified_id]) == normalize_name(space.dataset(name).vocabulary[local_id])
            )
        # 2-D arrays keep their shape
        grid = np.stack([local, local[::-1]])
        np.testing.assert_array_equal(space.to_local(name, space.to_unified(name, grid)), grid)
    # unified -> (dataset, local) -> unified for every unified id
    for unified_id in range(space.num_classes):
        owners = space.owners(unified_id)
        assert owners, f"unified id {unified_id} has no dataset"
        if space.mode == "concat":
            assert len(owners) == 1
        for name, local_id in owners:
            assert space.to_unified(name, local_id) == unified_id
            assert space.dataset_mask(name)[unified_id]


def test_to_local_of_foreign_ids():
    space = UnifiedLabelSpace(DATASETS, mode="merge_by_name")
    bus = space.to_unified("o365", 1)
    with pytest.raises(ValueError, match=r"do not belong to dataset 'coco'"):
        space.to_local("coco", bus)
    assert space.to_local("coco", bus, missing=-1) == -1
    np.testing.assert_array_equal(space.to_local("lvis", [0, bus, 6], missing=-1), [0, -1, 2])


def test_validation_errors():
    space = UnifiedLabelSpace(DATASETS)
    with pytest.raises(KeyError, match="unknown dataset 'objects365'"):
        space.to_unified("objects365", 0)
    with pytest.raises(KeyError, match="dataset index 3 out of range"):
        space.to_unified(3, 0)
    with pytest.raises(IndexError, match=r"dataset 'coco': local id\(s\) \[4\] out of range \[0, 4\)"):
        space.to_unified("coco", [0, 4])
    with pytest.raises(IndexError, match=r"local id\(s\) \[-1\]"):
        space.to_unified("coco", -1)
    with pytest.raises(IndexError, match=r"unified id\(s\) \[12\] out of range \[0, 12\)"):
        space.to_local("lvis", 12)
    with pytest.raises(TypeError, match="must be integers"):
        space.to_unified("coco", [0.0, 1.0])
    with pytest.raises(ValueError, match="unique"):
        UnifiedLabelSpace([COCO, COCO])
    with pytest.raises(ValueError, match="non-empty list"):
        UnifiedLabelSpace([("empty", [])])
    with pytest.raises(ValueError, match="local id 1 must be a non-empty string"):
        UnifiedLabelSpace([("bad", ["a", ""])])
    with pytest.raises(ValueError, match="2 synonym lists for 3 classes"):
        UnifiedLabelSpace([("bad", ["a", "b", "c"], [["x"], []])])
    with pytest.raises(ValueError, match="unknown label-space mode"):
        UnifiedLabelSpace(DATASETS, mode="union")
    with pytest.raises(ValueError, match="same normalised name 'traffic light'"):
        UnifiedLabelSpace([("dup", ["traffic_light", "Traffic Light"])], mode="merge_by_name")
    # concat keeps within-dataset duplicates as separate entries
    assert UnifiedLabelSpace([("dup", ["a", "a"])]).num_classes == 2


def test_custom_label_map():
    # UniDet-style learned space: coco "person" and o365 "Person" share id 0, the rest is arbitrary
    label_map = {"coco": [0, 1, 2, 3], "o365": [0, 4, 5, 6, 3], "lvis": [0, 1, 7]}
    space = UnifiedLabelSpace(DATASETS, mode="custom", label_map=label_map)
    assert space.num_classes == 8
    assert space.names[5] == "traffic light"  # o365 spelling: coco's traffic_light is not merged here
    assert space.owners(3) == (("coco", 3), ("o365", 4))
    for name, ids in label_map.items():
        np.testing.assert_array_equal(space.to_local(name, ids), np.arange(len(ids)))
    with pytest.raises(ValueError, match="two local ids to one unified id"):
        UnifiedLabelSpace(DATASETS, mode="custom", label_map={**label_map, "lvis": [0, 0, 7]})
    with pytest.raises(ValueError, match=r"unified ids \[7\] are used by no dataset"):
        UnifiedLabelSpace(DATASETS, mode="custom", label_map={**label_map, "lvis": [0, 1, 8]})
    with pytest.raises(ValueError, match="2 entries for 3 classes"):
        UnifiedLabelSpace(DATASETS, mode="custom", label_map={**label_map, "lvis": [0, 1]})
    with pytest.raises(ValueError, match="only accepted with mode='custom'"):
        UnifiedLabelSpace(DATASETS, label_map=label_map)


@pytest.mark.parametrize("mode", ["concat", "merge_by_name", "custom"])
def test_json_save_load_equality(tmp_path, mode):
    kwargs = (
        {"label_map": {"coco": [0, 1, 2, 3], "o365": [0, 4, 5, 6, 3], "lvis": [0, 1, 7]}} if mode == "custom" else {}
    )
    space = UnifiedLabelSpace(DATASETS, mode=mode, **kwargs)
    path = tmp_path / "sub" / "label_space.json"
    space.save_json(path)
    data = json.loads(path.read_text())
    assert {"version", "mode", "categories", "label_map", "dataset_inds", "dataset_mask", "datasets"} <= set(data)
    assert data["mode"] == mode and data["num_classes"] == space.num_classes
    assert [c["id"] for c in data["categories"]] == list(range(space.num_classes))
    assert data["categories"][0]["datasets"][0] == {"dataset": "coco", "local_id": 0, "name": "person"}
    assert data["label_map"]["o365"] == space.label_map["o365"].tolist()
    assert data["dataset_mask"]["lvis"] == space.dataset_mask("lvis").astype(int).tolist()
    loaded = UnifiedLabelSpace.load_json(path)
    assert loaded == space
    assert loaded.synonyms == space.synonyms
    for name in space.dataset_names:
        np.testing.assert_array_equal(loaded.dataset_inds[name], space.dataset_inds[name])
    assert loaded != UnifiedLabelSpace(DATASETS[:2], mode=mode if mode != "custom" else "concat")


def test_json_inconsistent_file_is_rejected(tmp_path):
    space = UnifiedLabelSpace(DATASETS)
    data = space.to_dict()
    data["label_map"]["lvis"] = [9, 10, 12]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"bad\.json: invalid label-space file: stored label_map disagrees.*lvis"):
        UnifiedLabelSpace.load_json(path)
    data = space.to_dict()
    data["version"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="unsupported version 99"):
        UnifiedLabelSpace.load_json(path)
    data = space.to_dict()
    del data["categories"]
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="missing key 'categories'"):
        UnifiedLabelSpace.load_json(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid json"):
        UnifiedLabelSpace.load_json(path)


def test_read_only_maps():
    space = UnifiedLabelSpace(DATASETS)
    with pytest.raises(ValueError, match="read-only"):
        space.label_map["coco"][0] = 5


def test_from_dataset_names_reads_metadata_catalog():
    d2_data = pytest.importorskip("detectron2.data")
    catalog, metadata = d2_data.DatasetCatalog, d2_data.MetadataCatalog
    names = ["_test_ls_coco", "_test_ls_o365", "_test_ls_novocab"]
    try:
        catalog.register(names[0], list)
        metadata.get(names[0]).set(vocabulary=["person", "car"])
        catalog.register(names[1], list)
        metadata.get(names[1]).set(vocabulary=["person", "bus"], synonyms=[["human"], []])
        catalog.register(names[2], list)
        space = UnifiedLabelSpace.from_dataset_names(names[:2], mode="merge_by_name")
        assert space.dataset_names == names[:2]
        assert space.names == ["person", "car", "bus"] and space.synonyms[0] == ["human"]
        with pytest.raises(KeyError, match="'_test_ls_missing' is not registered"):
            UnifiedLabelSpace.from_dataset_names(["_test_ls_missing"])
        with pytest.raises(ValueError, match="has no 'vocabulary'"):
            UnifiedLabelSpace.from_dataset_names([names[2]])
    finally:
        for name in names:
            if name in catalog.list():
                catalog.remove(name)
            metadata.remove(name)


# ------------------------------------------------------------------------------------------ similarity
def _unit(angles_deg):
    angles = np.deg2rad(np.asarray(angles_deg, dtype=np.float64))
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def test_default_similarity_symmetric_unit_diagonal_in_unit_interval():
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(40, 16)) + 0.5  # positive offset: compressed cosines as with CLIP prompts
    sim = label_similarity(embeddings)
    assert sim.dtype == np.float32 and sim.shape == (40, 40)
    np.testing.assert_allclose(sim, sim.T, atol=1e-7)
    np.testing.assert_allclose(np.diag(sim), 1.0)
    assert sim.min() >= 0.0 and sim.max() <= 1.0
    assert sim.min() < 0.05  # the stretch uses the whole [0, 1] range (each row has a 0 before symmetrising)
    # raw per-row min-max is not symmetric; the default equals its symmetrisation
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    cosine = unit @ unit.T
    row = (cosine - cosine.min(1, keepdims=True)) / (cosine.max(1, keepdims=True) - cosine.min(1, keepdims=True))
    raw = label_similarity(embeddings, symmetrize=False)
    np.testing.assert_allclose(raw, row, atol=1e-6)
    assert np.abs(raw - raw.T).max() > 0.01
    np.testing.assert_allclose(sim, (row + row.T) / 2, atol=1e-6)


def test_minmax_row_on_hand_computed_example():
    # unit vectors at 0, 60 and 90 degrees: cosines [[1, .5, 0], [.5, 1, .866], [0, .866, 1]]
    sim = label_similarity(_unit([0, 60, 90]))
    c = np.cos(np.deg2rad(30))
    row1_2 = (c - 0.5) / 0.5  # row 1: min .5, max 1
    expected = np.array([[1.0, 0.25, 0.0], [0.25, 1.0, (row1_2 + c) / 2], [0.0, (row1_2 + c) / 2, 1.0]])
    np.testing.assert_allclose(sim, expected, atol=1e-6)


def test_softmax_and_none_and_global_variants():
    embeddings = _unit([0, 60, 90, 180])
    cosine = embeddings @ embeddings.T
    soft = label_similarity(embeddings, "softmax_row", temperature=0.1)
    expected = np.exp(cosine / 0.1) / np.exp(cosine / 0.1).sum(1, keepdims=True)
    np.testing.assert_allclose(soft, expected, rtol=1e-5)
    np.testing.assert_allclose(soft.sum(axis=1), 1.0, rtol=1e-6)  # each row is a distribution
    assert np.all(np.argmax(soft, axis=1) == np.arange(4)) and np.all(np.diag(soft) < 1.0)
    assert np.abs(soft - soft.T).max() > 1e-3  # not symmetric unless asked
    np.testing.assert_allclose(
        label_similarity(embeddings, "softmax_row", temperature=0.1, symmetrize=True), (soft + soft.T) / 2
    )
    flatter = label_similarity(embeddings, "softmax_row", temperature=1.0)
    assert np.diag(flatter).max() < np.diag(soft).min()  # higher temperature -> flatter rows

    none = label_similarity(embeddings, "none")
    np.testing.assert_allclose(none, np.clip(cosine, 0, 1), atol=1e-6)
    assert none[0, 3] == 0.0 and none[0, 1] == pytest.approx(0.5)  # negative cosine clamped

    glob = label_similarity(embeddings, "minmax_global")
    np.testing.assert_allclose(glob, (cosine + 1) / 2, atol=1e-6)  # global min is -1 (0 vs 180 degrees)
    np.testing.assert_allclose(glob, glob.T)
    with pytest.raises(ValueError, match="unknown similarity normalization"):
        label_similarity(embeddings, "zscore")
    with pytest.raises(ValueError, match="temperature must be > 0"):
        label_similarity(embeddings, "softmax_row", temperature=0)


def test_topk_and_threshold():
    rng = np.random.default_rng(1)
    embeddings = rng.normal(size=(12, 8))
    full = label_similarity(embeddings)
    top = label_similarity(embeddings, topk=3)
    for i in range(12):
        kept = np.flatnonzero(top[i])
        assert i in kept and len(kept) <= 4
        others = np.delete(full[i], i)
        # kept off-diagonal values are the 3 largest of the row
        np.testing.assert_allclose(np.sort(np.delete(top[i], i))[-3:], np.sort(others)[-3:])
        np.testing.assert_allclose(top[i, kept], full[i, kept])
    assert np.count_nonzero(label_similarity(embeddings, topk=0)) == 12  # only the diagonal
    np.testing.assert_array_equal(label_similarity(embeddings, topk=50), full)
    thr = label_similarity(embeddings, threshold=0.5)
    np.testing.assert_array_equal(thr, np.where(full >= 0.5, full, 0.0))
    np.testing.assert_allclose(thr, thr.T)


def test_similarity_of_label_space_with_duplicates():
    space = UnifiedLabelSpace([("a", ["person", "car"]), ("b", ["person", "tree"])])
    embeddings = np.array([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    sim = space.similarity(embeddings)
    assert sim[0, 2] == pytest.approx(1.0)  # duplicated "person" entries are fully similar
    with pytest.raises(ValueError, match=r"expected text embeddings of shape \(4, D\)"):
        space.similarity(embeddings[:3])
    with pytest.raises(ValueError, match="zero or non-finite row"):
        label_similarity(np.zeros((2, 3)))
