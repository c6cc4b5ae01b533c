import math

import pytest
import torch
import torch.nn.functional as F

from ofa_sdk.training.losses import MemoryBank, mine_pairs, pair_loss, real_loss, supcon_loss, total_loss
from ofa_sdk.config import LossConfig
from ofa_sdk.models import PairHead, RealHead


def supcon_loop(z, y, tau, bz=None, by=None):
    """Direct double loop over Eq. 6 (bank: negatives only, same-label entries excluded)."""
    total, count = 0.0, 0
    n = len(z)
    for i in range(n):
        pos = [p for p in range(n) if p != i and y[p] == y[i]]
        if not pos:
            continue
        denom = sum(math.exp(float(z[i] @ z[j]) / tau) for j in range(n) if j != i)
        if bz is not None:
            denom += sum(math.exp(float(z[i] @ bz[k]) / tau) for k in range(len(bz))
                         if by[k] != y[i])
        total += -sum(math.log(math.exp(float(z[i] @ z[p]) / tau) / denom) for p in pos) / len(pos)
        count += 1
    return total / count


def test_supcon_matches_double_loop():
    torch.manual_seed(0)
    z = F.normalize(torch.randn(7, 5, dtype=torch.double), dim=1)
    y = torch.tensor([0, 0, 1, 1, 1, 2, 3])  # 2 and 3 have no positives
    bz = F.normalize(torch.randn(4, 5, dtype=torch.double), dim=1)
    by = torch.tensor([1, 5, 0, 9])
    for tau in (0.5, 0.1):
        got = supcon_loss(z.float(), y, tau).item()
        assert got == pytest.approx(supcon_loop(z, y, tau), rel=1e-4)
        got = supcon_loss(z.float(), y, tau, bz.float(), by).item()
        assert got == pytest.approx(supcon_loop(z, y, tau, bz, by), rel=1e-4)


def test_supcon_no_positives_is_zero_not_nan():
    z = F.normalize(torch.randn(3, 4), dim=1).requires_grad_(True)
    loss = supcon_loss(z, torch.tensor([0, 1, 2]), 0.02)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(z.grad).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_supcon_stable_at_tau_002_under_low_precision(dtype):
    torch.manual_seed(0)
    w = torch.randn(6, 8, requires_grad=True)
    x = torch.randn(16, 6)
    y = torch.arange(16) // 4
    bank = MemoryBank(32, 8)
    bank.push(F.normalize(torch.randn(20, 8), dim=1), torch.randint(0, 6, (20,)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = F.normalize(x @ w, dim=1).to(dtype)
        loss = supcon_loss(z, y, 0.02, *bank.get())
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(w.grad).all()
    # identical features at tau=0.02: logits 50 would overflow exp in fp16 without the max shift
    zz = F.normalize(torch.ones(4, 8), dim=1).half()
    assert torch.isfinite(supcon_loss(zz, torch.tensor([0, 0, 1, 1]), 0.02))


def test_bank_wraps_and_uses_filled_slots_only():
    b = MemoryBank(5, 2)
    assert len(b.get()[0]) == 0
    b.push(torch.ones(3, 2), torch.tensor([1, 2, 3]))
    f, l = b.get()
    assert len(f) == 3 and l.tolist() == [1, 2, 3]
    b.push(2 * torch.ones(4, 2), torch.tensor([4, 5, 6, 7]))
    f, l = b.get()
    assert len(f) == 5 and sorted(l.tolist()) == [3, 4, 5, 6, 7]
    assert int(b.ptr) == 2
    b.push(torch.zeros(7, 2), torch.arange(10, 17))  # larger than the bank: newest kept
    assert sorted(b.get()[1].tolist()) == [12, 13, 14, 15, 16]


def test_replayed_architecture_is_never_its_own_negative():
    z = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.01]]), dim=1)
    y = torch.tensor([42, 42])
    base = supcon_loss(z, y, 0.1)
    with_same = supcon_loss(z, y, 0.1, z.clone(), torch.tensor([42, 42]))
    with_other = supcon_loss(z, y, 0.1, z.clone(), torch.tensor([7, 7]))
    assert with_same.item() == pytest.approx(base.item(), rel=1e-6)
    assert with_other.item() > base.item() + 0.1


def test_pair_mining_is_balanced_and_losses_flow():
    y = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])
    i, j, t = mine_pairs(y, torch.Generator().manual_seed(0))
    assert int(t.sum()) == len(t) // 2 > 0
    assert bool(((y[i] == y[j]).float() == t).all()) and bool((i != j).all())
    z = F.normalize(torch.randn(8, 16), dim=1).requires_grad_(True)
    head, rh = PairHead(16, (8, 8)), RealHead(16)
    la, acc = pair_loss(head, z, y)
    lc = real_loss(rh, z, y != 2)
    lt = total_loss(LossConfig(), supcon_loss(z, y), la, lc)
    lt.backward()
    assert 0 <= acc <= 1 and torch.isfinite(z.grad).all()
    assert head.first.weight.grad.abs().sum() > 0 and rh.net[0].weight.grad.abs().sum() > 0
