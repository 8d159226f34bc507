"""Per-class FIFO memory bank (ring buffer) of Sec. 3.5.1."""

import torch

from u2plus.losses.queues import ClassQueues


def _k(*vals):
    return torch.tensor(vals, dtype=torch.float32).view(-1, 1)


def _slots(q, c):
    return q.keys[c, :, 0].tolist()


def test_enqueue_ring_order_wrap_and_overwrite_positions():
    q = ClassQueues(num_classes=2, dim=1, size=3)
    q.enqueue(_k(1, 2), torch.tensor([0, 0]))
    assert _slots(q, 0) == [1, 2, 0] and q.ptr.tolist() == [2, 0] and q.count.tolist() == [2, 0]
    # 3 -> slot 2, 4 wraps to slot 0 (overwrites the oldest, 1); 10 -> class 1 slot 0
    q.enqueue(_k(3, 4, 10), torch.tensor([0, 0, 1]))
    assert _slots(q, 0) == [4, 2, 3]
    assert _slots(q, 1) == [10, 0, 0]
    assert q.ptr.tolist() == [1, 1] and q.count.tolist() == [3, 1]
    # next write of class 0 overwrites slot 1 (value 2, now the oldest)
    q.enqueue(_k(5), torch.tensor([0]))
    assert _slots(q, 0) == [4, 5, 3] and q.ptr.tolist() == [2, 1]


def test_enqueue_interleaved_classes_keep_arrival_order_within_class():
    q = ClassQueues(num_classes=3, dim=1, size=4)
    q.enqueue(_k(11, 20, 12, 21, 13), torch.tensor([1, 2, 1, 2, 1]))
    assert _slots(q, 1) == [11, 12, 13, 0]
    assert _slots(q, 2) == [20, 21, 0, 0]
    assert _slots(q, 0) == [0, 0, 0, 0]
    assert q.ptr.tolist() == [0, 3, 2] and q.count.tolist() == [0, 3, 2]


def test_enqueue_more_than_size_in_one_push_keeps_newest():
    q = ClassQueues(num_classes=2, dim=1, size=3)
    q.enqueue(_k(1), torch.tensor([0]))  # ptr[0] = 1
    q.enqueue(_k(5, 6, 100, 7, 8, 9), torch.tensor([0, 0, 1, 0, 0, 0]))
    # class 0 got 5 keys starting at slot 1: offsets 0..4; only 7, 8, 9 survive at
    # slots (1+2)%3=0, (1+3)%3=1, (1+4)%3=2
    assert _slots(q, 0) == [7, 8, 9]
    assert q.ptr.tolist() == [(1 + 5) % 3, 1] and q.count.tolist() == [3, 1]
    assert _slots(q, 1) == [100, 0, 0]


def test_enqueue_size_one_and_empty_push():
    q = ClassQueues(num_classes=1, dim=2, size=1)
    q.enqueue(torch.empty(0, 2), torch.empty(0, dtype=torch.long))
    assert q.count.tolist() == [0]
    q.enqueue(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0]))
    assert q.keys[0, 0].tolist() == [0.0, 1.0] and q.count.tolist() == [1] and q.ptr.tolist() == [0]


def test_enqueue_detaches_and_casts():
    q = ClassQueues(num_classes=1, dim=2, size=2)
    k = torch.tensor([[1.0, 2.0]], dtype=torch.float16, requires_grad=True)
    q.enqueue(k, torch.tensor([0]))
    assert q.keys.dtype == torch.float32 and not q.keys.requires_grad
    assert q.keys[0, 0].tolist() == [1.0, 2.0]


def test_sample_only_valid_entries_of_own_class_and_uniform():
    q = ClassQueues(num_classes=3, dim=1, size=5)
    q.enqueue(_k(1, 2, 7), torch.tensor([0, 0, 1]))
    u = torch.rand(3, 400, generator=torch.Generator().manual_seed(0))
    s = q.sample(torch.tensor([0, 1, 0]), u)
    assert s.shape == (3, 400, 1)
    assert set(s[1].flatten().tolist()) == {7.0}  # class 1 has one entry
    vals = s[[0, 2]].flatten()
    assert set(vals.tolist()) == {1.0, 2.0}  # never an empty slot (0) nor another class
    frac_one = (vals == 1.0).float().mean().item()
    assert 0.4 < frac_one < 0.6


def test_sample_full_queue_reaches_all_slots_and_is_reproducible():
    q = ClassQueues(num_classes=1, dim=1, size=4)
    q.enqueue(_k(1, 2, 3, 4, 5, 6), torch.zeros(6, dtype=torch.long))  # [5, 6, 3, 4]
    s1 = q.sample(torch.tensor([0]), torch.rand(1, 200, generator=torch.Generator().manual_seed(3)))
    assert set(s1.flatten().tolist()) == {3.0, 4.0, 5.0, 6.0}
    # slot floor(u * count): u just below 1 still lands in the last valid slot
    edges = q.sample(torch.tensor([0]), torch.tensor([[0.0, 0.2499, 0.25, 0.9999999]]))
    assert edges.flatten().tolist() == [5.0, 5.0, 6.0, 4.0]


def test_reset_and_state_dict_buffers():
    q = ClassQueues(num_classes=2, dim=3, size=4)
    assert set(q.state_dict()) == {"keys", "ptr", "count"}
    assert q.keys.shape == (2, 4, 3)
    q.enqueue(torch.ones(3, 3), torch.tensor([0, 1, 1]))
    other = ClassQueues(2, 3, 4)
    other.load_state_dict(q.state_dict())
    assert other.count.tolist() == [1, 2] and other.ptr.tolist() == [1, 2]
    q.reset()
    assert q.count.tolist() == [0, 0] and q.ptr.tolist() == [0, 0] and q.keys.abs().sum() == 0


def test_write_plan_duplicate_slots_all_carry_newest_key():
    """On parallel devices duplicate index writes land in any order: every write to a slot
    must therefore carry the same (newest) row, so the result cannot depend on that order."""
    from u2plus.losses.queues import _ring_write_plan

    # size 2, class 0 ptr 1: rows 0,1,3,4 are class 0 (offsets 0..3), row 2 is class 1
    cls, slot, src, n_new = _ring_write_plan(torch.tensor([0, 0, 1, 0, 0]), torch.tensor([1, 0]), 2)
    plan = sorted(zip(cls.tolist(), slot.tolist(), src.tolist()))
    # class 0 offsets 0..3 -> slots 1,0,1,0 ; newest rows: slot 1 <- row 3, slot 0 <- row 4
    assert plan == [(0, 0, 4), (0, 0, 4), (0, 1, 3), (0, 1, 3), (1, 0, 2)]
    assert n_new.tolist() == [4, 1]
    # simulate the opposite write order: the buffer content is the same
    q = ClassQueues(2, 1, size=2)
    q.ptr[0] = 1
    keys = _k(1, 2, 50, 3, 4)
    buf_fwd, buf_rev = torch.zeros(2, 2), torch.zeros(2, 2)
    for c, s, r in plan:
        buf_fwd[c, s] = keys[r, 0]
    for c, s, r in reversed(plan):
        buf_rev[c, s] = keys[r, 0]
    assert torch.equal(buf_fwd, buf_rev)
    q.enqueue(keys, torch.tensor([0, 0, 1, 0, 0]))
    assert torch.equal(q.keys[..., 0], buf_fwd)
    assert buf_fwd.tolist() == [[4.0, 3.0], [50.0, 0.0]]
