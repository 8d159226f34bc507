"""u2plus.data.sampler: deterministic, resumable, process-count-independent sampling."""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from u2plus.data.sampler import SeededDataset, StepBatchSampler, collate, make_train_loader, sample_seed


def take(sampler, n):
    return list(itertools.islice(iter(sampler), n))


def test_same_seed_same_stream_other_seed_other_stream():
    a = take(StepBatchSampler(10, 4, seed=1), 6)
    b = take(StepBatchSampler(10, 4, seed=1), 6)
    c = take(StepBatchSampler(10, 4, seed=2), 6)
    assert a == b
    assert [i for batch in a for i, _ in batch] != [i for batch in c for i, _ in batch]


def test_stream_changes_order():
    a = take(StepBatchSampler(10, 5, seed=1, stream=0), 2)
    b = take(StepBatchSampler(10, 5, seed=1, stream=1), 2)
    assert [i for bt in a for i, _ in bt] != [i for bt in b for i, _ in bt]


def test_batches_have_global_batch_size_per_process():
    s = StepBatchSampler(7, 6, seed=0, rank=1, world_size=3)
    for batch in take(s, 4):
        assert len(batch) == 2


@pytest.mark.parametrize("n,batch", [(10, 5), (10, 3), (7, 4)])
def test_every_index_once_per_epoch(n, batch):
    s = StepBatchSampler(n, batch, seed=5)
    epochs = 3
    steps = -(-epochs * n // batch)  # enough steps to cover 3 full epochs
    stream = [i for bt in take(s, steps) for i, _ in bt]
    for e in range(epochs):
        assert sorted(stream[e * n:(e + 1) * n]) == list(range(n))


def test_epochs_are_reshuffled():
    s = StepBatchSampler(50, 50, seed=0)
    e0, e1 = [[i for i, _ in bt] for bt in take(s, 2)]
    assert sorted(e0) == sorted(e1) == list(range(50))
    assert e0 != e1


def test_resume_at_step_replays_exactly():
    full = take(StepBatchSampler(9, 4, seed=3), 12)
    for s in (0, 1, 5, 11):
        resumed = take(StepBatchSampler(9, 4, seed=3, start_step=s), 12 - s)
        assert resumed == full[s:]
        # batch_for_step on a fresh sampler (no cached permutation) agrees too
        assert StepBatchSampler(9, 4, seed=3).batch_for_step(s) == full[s]


def test_batch_for_step_independent_of_query_order():
    s1 = StepBatchSampler(9, 4, seed=3)
    forward = [s1.batch_for_step(k) for k in range(8)]
    s2 = StepBatchSampler(9, 4, seed=3)
    backward = [s2.batch_for_step(k) for k in reversed(range(8))][::-1]
    assert forward == backward


def test_two_processes_equal_one_process_with_double_batch():
    B = 3
    one = take(StepBatchSampler(11, 2 * B, seed=4), 7)
    r0 = take(StepBatchSampler(11, 2 * B, seed=4, rank=0, world_size=2), 7)
    r1 = take(StepBatchSampler(11, 2 * B, seed=4, rank=1, world_size=2), 7)
    for step in range(7):
        assert len(r0[step]) == len(r1[step]) == B
        assert r0[step] + r1[step] == one[step]  # same (index, seed) pairs, in order


def test_world_size_must_divide_batch():
    with pytest.raises(ValueError, match="divisible"):
        StepBatchSampler(10, 5, seed=0, world_size=2)


def test_seeds_differ_per_position():
    s = StepBatchSampler(4, 4, seed=0)
    seeds = [sd for bt in take(s, 5) for _, sd in bt]
    assert len(set(seeds)) == len(seeds) == 20
    # an index seen again in a later epoch gets a different augmentation seed
    first = dict((i, sd) for i, sd in take(s, 1)[0])
    second = dict((i, sd) for i, sd in s.batch_for_step(1))
    assert all(first[i] != second[i] for i in range(4))
    # the seed is the function of (seed, stream, position)
    assert s.batch_for_step(2)[1][1] == sample_seed(0, 0, 9)
    assert sample_seed(0, 0, 9) != sample_seed(0, 1, 9) != sample_seed(1, 0, 9)
    assert 0 <= sample_seed(123, 4, 10**9) < 2**63


class RandomAugDataset(torch.utils.data.Dataset):
    """Item = index + noise drawn from the global torch RNG (stands for a random augmentation)."""

    def __len__(self):
        return 6

    def __getitem__(self, index):
        return {"x": torch.full((3,), float(index)) + torch.rand(3), "index": index}


def test_seeded_dataset_same_seed_same_sample():
    ds = SeededDataset(RandomAugDataset())
    assert len(ds) == 6
    a, b = ds[(2, 1234)], ds[(2, 1234)]
    assert torch.equal(a["x"], b["x"])
    c = ds[(2, 1235)]
    assert not torch.equal(a["x"], c["x"])
    assert torch.all((a["x"] >= 2) & (a["x"] < 3))
    # the noise is exactly what torch.manual_seed(seed) produces
    g = torch.Generator().manual_seed(1234)
    assert torch.equal(a["x"], 2 + torch.rand(3, generator=g))


def test_seeded_dataset_leaves_global_rng_untouched():
    ds = SeededDataset(RandomAugDataset())
    torch.manual_seed(99)
    before = torch.get_rng_state()
    ds[(1, 5)]
    ds[(3, 6)]
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(99)
    expected = torch.rand(4)
    torch.set_rng_state(before)
    assert torch.equal(torch.rand(4), expected)


def test_make_train_loader_does_not_consume_global_rng():
    torch.manual_seed(0)
    before = torch.get_rng_state()
    py_before = random.getstate()
    loader = make_train_loader(RandomAugDataset(), global_batch=4, seed=7, start_step=0, num_workers=0)
    it = iter(loader)
    batch = next(it)
    assert torch.equal(torch.get_rng_state(), before)
    assert random.getstate() == py_before
    assert batch["x"].shape == (4, 3)
    assert len(batch["index"]) == 4


def test_make_train_loader_matches_sampler_and_resumes():
    ds = RandomAugDataset()
    sampler = StepBatchSampler(len(ds), 4, seed=7)
    loader = make_train_loader(ds, 4, seed=7, start_step=0, num_workers=0)
    batches = list(itertools.islice(iter(loader), 5))
    for step, batch in enumerate(batches):
        pairs = sampler.batch_for_step(step)
        assert batch["index"] == [i for i, _ in pairs]
        expected = torch.stack([SeededDataset(ds)[p]["x"] for p in pairs])
        assert torch.equal(batch["x"], expected)
    resumed = make_train_loader(ds, 4, seed=7, start_step=3, num_workers=0)
    again = list(itertools.islice(iter(resumed), 2))
    for a, b in zip(again, batches[3:]):
        assert a["index"] == b["index"]
        assert torch.equal(a["x"], b["x"])


def test_collate_stacks_tensors_and_lists_others():
    out = collate([{"t": torch.tensor([1, 2]), "id": "a"}, {"t": torch.tensor([3, 4]), "id": "b"}])
    assert torch.equal(out["t"], torch.tensor([[1, 2], [3, 4]]))
    assert out["id"] == ["a", "b"]
