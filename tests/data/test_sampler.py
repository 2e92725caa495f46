"""MultiDatasetSampler: dataset shares, rank agreement, repeat factors, stage switches and exact resume."""

import itertools

import numpy as np
import pytest

from unidet2.data.sampler import (
    MultiDatasetSampler,
    class_aware_factors,
    repeat_factors_from_category_frequency,
)

SIZES = [7, 1_000, 120_000]  # very unequal on purpose
RATIOS = [1.0, 2.0, 5.0]


def _take(sampler, num_batches):
    return list(itertools.islice(sampler.iter_batches(), num_batches))


def test_dataset_shares_follow_ratios_not_sizes():
    sampler = MultiDatasetSampler(dataset_sizes=SIZES, ratios=RATIOS, seed=3, rank=0, world_size=1)
    sources = np.repeat(np.arange(len(SIZES)), SIZES)
    drawn = np.array([b[0] for b in _take(sampler, 20_000)])
    shares = np.bincount(sources[drawn], minlength=3) / drawn.size
    expected = np.array(RATIOS) / sum(RATIOS)
    np.testing.assert_allclose(shares, expected, atol=0.02)
    # the size-proportional mixture would put > 99 % on the big dataset: the test separates the two
    assert shares[2] < 0.7
    counts = sampler.realised_counts()
    np.testing.assert_array_equal(counts["batches"], np.bincount(sources[drawn], minlength=3))
    np.testing.assert_allclose(counts["shares"], shares)
    np.testing.assert_allclose(counts["expected"], expected)
    assert "realised shares after 20000 batches" in sampler.log_realised_shares(["a", "b", "c"])


def test_small_dataset_is_cycled_uniformly():
    sampler = MultiDatasetSampler(dataset_sizes=SIZES, ratios=RATIOS, seed=5, rank=0, world_size=1)
    drawn = np.array([b[0] for b in _take(sampler, 20_000)])
    small = np.bincount(drawn[drawn < SIZES[0]], minlength=SIZES[0])
    # ~2500 draws over 7 images: each image ~357 +- 18
    assert small.min() > 280 and small.max() < 440


def test_ranks_draw_the_same_dataset_at_every_step():
    sources = np.repeat(np.arange(len(SIZES)), SIZES)
    groups = np.random.default_rng(0).integers(0, 2, size=sources.size)  # two aspect buckets
    batches = []
    for rank in range(2):
        sampler = MultiDatasetSampler(
            sources, ratios=RATIOS, aspect_groups=groups, batch_size=4, seed=11, rank=rank, world_size=2
        )
        batches.append(np.array(_take(sampler, 3_000)))
    datasets = []
    for rank_batches in batches:
        batch_sources = sources[rank_batches]
        batch_groups = groups[rank_batches]
        assert (batch_sources == batch_sources[:, :1]).all(), "a batch mixes datasets"
        assert (batch_groups == batch_groups[:, :1]).all(), "a batch mixes aspect-ratio buckets"
        datasets.append(batch_sources[:, 0])
    np.testing.assert_array_equal(datasets[0], datasets[1])
    # rank-specific image streams: the ranks do not draw the same images
    assert (batches[0] != batches[1]).mean() > 0.9
    # and the shared schedule is what every rank realised
    np.testing.assert_array_equal(sampler.dataset_schedule(0, 3_000), datasets[0])


def test_flat_iteration_matches_batches():
    a = MultiDatasetSampler(dataset_sizes=[5, 50], ratios=[1, 1], batch_size=3, seed=2, rank=0, world_size=1)
    b = MultiDatasetSampler(dataset_sizes=[5, 50], ratios=[1, 1], batch_size=3, seed=2, rank=0, world_size=1)
    flat = list(itertools.islice(iter(a), 30))
    assert flat == [i for batch in _take(b, 10) for i in batch]


def test_repeat_factor_formula_and_rare_image_is_drawn_more():
    # dataset 0: 999 images of class 0, one image also holding the rare class 1; dataset 1 only class 0
    records = [{"dataset_source": 0, "annotations": [{"category_id": 0}]} for _ in range(999)]
    records.append({"dataset_source": 0, "annotations": [{"category_id": 0}, {"category_id": 1}]})
    records += [{"dataset_source": 1, "annotations": [{"category_id": 1}]} for _ in range(10)]
    factors = repeat_factors_from_category_frequency(records, 0.1)
    # f_1 in dataset 0 = 1/1000 -> r = sqrt(0.1 / 0.001) = 10; class 0 is in every image -> r = 1
    assert factors[999] == pytest.approx(10.0)
    np.testing.assert_allclose(factors[:999], 1.0)
    # in dataset 1, class 1 is in all images: frequencies are per dataset, so no repeat there
    np.testing.assert_allclose(factors[1000:], 1.0)

    sources = [r["dataset_source"] for r in records]
    sampler = MultiDatasetSampler(sources, ratios=[1, 0], repeat_factors=factors, seed=0, rank=0, world_size=1)
    drawn = np.array([b[0] for b in _take(sampler, 50_000)])
    counts = np.bincount(drawn, minlength=len(records))
    expected_rare = 50_000 * 10 / (999 + 10)  # ~495.5
    assert abs(counts[999] - expected_rare) < 5 * np.sqrt(expected_rare)
    assert counts[999] > 5 * counts[:999].mean()
    assert counts[1000:].sum() == 0  # ratio 0: never drawn


def test_per_class_thresholds_and_ceil():
    records = [{"annotations": [{"category_id": 0}]} for _ in range(90)]
    records += [{"annotations": [{"category_id": 1}]} for _ in range(10)]
    # class 0 left out of the threshold mapping -> r = 1; class 1: f = 0.1, (0.4 / 0.1) ** 1 = 4
    factors = repeat_factors_from_category_frequency(records, {1: 0.4}, power={1: 1.0})
    np.testing.assert_allclose(factors, [1.0] * 90 + [4.0] * 10)
    factors = repeat_factors_from_category_frequency(records, 0.3, ceil=True)  # sqrt(3) = 1.73 -> 2
    np.testing.assert_allclose(factors, [1.0] * 90 + [2.0] * 10)


def test_class_aware_factors():
    records = [{"annotations": [{"category_id": 0}]} for _ in range(8)]
    records += [{"annotations": [{"category_id": 1}]} for _ in range(2)]
    records.append({"annotations": []})
    weights = class_aware_factors(records)
    # raw 1/8 for class-0 images and 1/2 for class-1 images, rescaled to mean 1 over labelled images
    raw = np.array([1 / 8] * 8 + [1 / 2] * 2)
    np.testing.assert_allclose(weights[:10], raw / raw.mean())
    assert weights[10] == 1.0
    # both classes are then drawn equally often in expectation
    assert weights[:8].sum() == pytest.approx(weights[8:10].sum())


def test_set_repeat_factors_changes_draws_from_the_next_step():
    a = MultiDatasetSampler(dataset_sizes=[100], ratios=[1], seed=4, rank=0, world_size=1)
    b = MultiDatasetSampler(dataset_sizes=[100], ratios=[1], seed=4, rank=0, world_size=1)
    first_a, first_b = _take(a, 500), _take(b, 500)
    assert first_a == first_b
    boosted = np.ones(100)
    boosted[7] = 100.0
    b.set_repeat_factors(boosted)
    np.testing.assert_allclose(b.repeat_factors, boosted)
    next_a = np.array(_take(a, 4_000))[:, 0]
    next_b = np.array(_take(b, 4_000))[:, 0]
    assert b.step == 4_500
    share_7 = (next_b == 7).mean()
    assert share_7 == pytest.approx(100 / 199, abs=0.03)
    assert (next_a == 7).mean() < 0.03
    with pytest.raises(ValueError, match="repeat_factors has 3 entries"):
        b.set_repeat_factors([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="finite and non-negative"):
        b.set_repeat_factors(-np.ones(100))


def test_state_dict_resume_gives_identical_continuation():
    sources = np.repeat([0, 1, 2], [30, 300, 3_000])
    groups = (np.arange(sources.size) % 3 == 0).astype(int)
    kwargs = {"ratios": [1, 1, 2], "aspect_groups": groups, "batch_size": 2, "seed": 9, "rank": 1, "world_size": 2}
    reference = MultiDatasetSampler(sources, **kwargs)
    stream = _take(reference, 3_000)  # crosses two random-number chunk boundaries

    partial = MultiDatasetSampler(sources, **kwargs)
    factors = np.linspace(1, 2, sources.size)
    _take(partial, 1_500)
    state = partial.state_dict()
    assert state["step"] == 1_500

    resumed = MultiDatasetSampler(sources, **kwargs)
    resumed.set_repeat_factors(factors)  # a different stage: load_state_dict restores the saved factors
    resumed.load_state_dict(state)
    assert _take(resumed, 1_500) == stream[1_500:]

    other_seed = MultiDatasetSampler(sources, **{**kwargs, "seed": 10})
    with pytest.raises(ValueError, match="seed"):
        other_seed.load_state_dict(state)
    other_ratios = MultiDatasetSampler(sources, **{**kwargs, "ratios": [1, 1, 1]})
    with pytest.raises(ValueError, match="ratios"):
        other_ratios.load_state_dict(state)


def test_validation_errors():
    with pytest.raises(ValueError, match="2 ratios for 3 datasets"):
        MultiDatasetSampler(dataset_sizes=[1, 2, 3], ratios=[1, 1], seed=0, rank=0, world_size=1)
    with pytest.raises(ValueError, match="exactly one of"):
        MultiDatasetSampler(ratios=[1], seed=0, rank=0, world_size=1)
    with pytest.raises(ValueError, match="non-negative and not all zero"):
        MultiDatasetSampler(dataset_sizes=[1, 2], ratios=[1, -1], seed=0, rank=0, world_size=1)
    with pytest.raises(ValueError, match="no record with positive weight"):
        MultiDatasetSampler(dataset_sizes=[0, 2], ratios=[1, 1], seed=0, rank=0, world_size=1)
    with pytest.raises(ValueError, match="reference dataset_source up to 2"):
        MultiDatasetSampler([0, 1, 2], ratios=[1, 1], seed=0, rank=0, world_size=1)
    with pytest.raises(ValueError, match="rank 2 out of range"):
        MultiDatasetSampler(dataset_sizes=[3], seed=0, rank=2, world_size=2)


def test_drawn_seed_is_replaced_by_the_saved_one_but_an_explicit_seed_must_match():
    saved = MultiDatasetSampler(dataset_sizes=[30, 10], ratios=[1, 1], batch_size=2, seed=123, rank=0, world_size=1)
    batches = saved.iter_batches()
    for _ in range(5):
        next(batches)
    state = saved.state_dict()
    expected = [next(batches) for _ in range(4)]

    drawn = MultiDatasetSampler(dataset_sizes=[30, 10], ratios=[1, 1], batch_size=2, rank=0, world_size=1)
    drawn.load_state_dict(state)
    resumed = drawn.iter_batches()
    assert [next(resumed) for _ in range(4)] == expected

    explicit = MultiDatasetSampler(dataset_sizes=[30, 10], ratios=[1, 1], batch_size=2, seed=7, rank=0, world_size=1)
    with pytest.raises(ValueError, match="seed"):
        explicit.load_state_dict(state)
