import math

import pytest
import torch

from latentfuse.model.training.optim import CautiousAdamW, cautious_mask, warmup_cosine


def test_cautious_mask_zeroes_sign_disagreeing_components():
    update = torch.tensor([1.0, -2.0, 3.0, -4.0, 0.5])
    grad = torch.tensor([2.0, 1.0, -1.0, -3.0, 0.1])   # agree, disagree, disagree, agree, agree
    mask = cautious_mask(update, grad)
    kept = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0])
    assert torch.equal(mask == 0, kept == 0)
    assert torch.allclose(mask[kept == 1], torch.full((3,), 5 / 4))  # numel / (Σφ + 1)


def test_cautious_step_leaves_disagreeing_parameters_untouched():
    p = torch.nn.Parameter(torch.zeros(4))
    opt = CautiousAdamW([p], lr=0.1, weight_decay=0.0)
    p.grad = torch.tensor([1.0, 1.0, 1.0, 1.0])
    opt.step()                       # m > 0 everywhere: p moves to -lr·scale
    before = p.detach().clone()
    p.grad = torch.tensor([1.0, -0.5, 1.0, -1e-3])  # m stays > 0: elements 1 and 3 disagree with it
    opt.step()
    delta = p.detach() - before
    assert delta[1] == 0 and delta[3] == 0
    assert delta[0] < 0 and delta[2] < 0


def test_non_cautious_equals_torch_adamw():
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(6, 3))
    b = torch.nn.Parameter(a.detach().clone())
    ours = CautiousAdamW([a], lr=1e-2, weight_decay=0.05, cautious=False)
    ref = torch.optim.AdamW([b], lr=1e-2, weight_decay=0.05)
    for _ in range(5):
        g = torch.randn(6, 3)
        a.grad, b.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
    assert torch.equal(a, b)


def test_cautious_state_matches_adamw_layout():
    p = torch.nn.Parameter(torch.ones(3))
    opt = CautiousAdamW([p])
    p.grad = torch.ones(3)
    opt.step()
    assert set(opt.state[p]) == {"step", "exp_avg", "exp_avg_sq"}
    fresh = CautiousAdamW([torch.nn.Parameter(torch.ones(3))])
    fresh.load_state_dict(opt.state_dict())


def test_warmup_cosine_schedule():
    f = warmup_cosine(10, 110, min_ratio=0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(110) == pytest.approx(0.1) and f(500) == pytest.approx(0.1)
    values = [f(s) for s in range(10, 111)]
    assert all(x >= y for x, y in zip(values, values[1:]))
