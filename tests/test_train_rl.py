"""RL pieces against hand-computed values: group-relative advantages, GAE, the clipped policy and value
objectives, the k3 KL estimate, token log-probs with entropies, and the rollout batch's layout.
"""

import math

import pytest
import torch

from zenlm.train.data import IGNORE
from zenlm.train.rl import (
    clipped_policy_loss,
    clipped_value_loss,
    gae,
    group_advantages,
    kl_k3,
    token_logps_entropy,
    whiten,
)
from zenlm.train.rollout import Rollout, collate_rollouts


def test_group_advantages_by_hand():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    # group 1: mean 0.25, sample std sqrt((0.75^2 + 3 * 0.25^2) / 3) = 0.5; group 2: all equal -> 0
    want = torch.tensor([0.75, -0.25, -0.25, -0.25, 0, 0, 0, 0]) / (0.5 + 1e-4)
    torch.testing.assert_close(group_advantages(r, 4), want)
    with pytest.raises(ValueError, match="groups of 3"):
        group_advantages(r, 3)


@pytest.mark.parametrize("gamma,lam,want", [
    (1.0, 0.9, [0.433, 0.37, 0.3]),  # deltas 0.1, 0.1, 0.3
    (0.5, 0.5, [-0.24375, -0.175, 0.3]),  # deltas -0.2, -0.25, 0.3
])
def test_gae_by_hand(gamma, lam, want):
    # one prompt position (masked), three completion tokens, one padding position (masked)
    rewards = torch.tensor([[9.0, 0.0, 0.0, 1.0, 9.0]])
    values = torch.tensor([[9.0, 0.5, 0.6, 0.7, 9.0]])
    mask = torch.tensor([[0, 1, 1, 1, 0]])
    adv, ret = gae(rewards, values, mask, gamma, lam)
    torch.testing.assert_close(adv, torch.tensor([[0.0] + want + [0.0]]))
    torch.testing.assert_close(ret, torch.tensor([[0.0, want[0] + 0.5, want[1] + 0.6, want[2] + 0.7, 0.0]]))


def test_clipped_policy_objective_by_hand():
    lp = torch.log(torch.tensor([1.5, 1.5, 0.5, 0.5, 1.0]))
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0, 2.0])
    loss, clipped = clipped_policy_loss(lp, torch.zeros(5), adv, 0.2)
    # ratio 1.5, A=+1: max(-1.5, -1.2) = -1.2 (clipped); A=-1: max(1.5, 1.2) = 1.5
    # ratio 0.5, A=+1: max(-0.5, -0.8) = -0.5; A=-1: max(0.5, 0.8) = 0.8 (clipped); ratio 1: -A
    torch.testing.assert_close(loss, torch.tensor([-1.2, 1.5, -0.5, 0.8, -2.0]))
    assert clipped.tolist() == [1.0, 0.0, 0.0, 1.0, 0.0]
    # the gradient is zero where clipped, -A * ratio elsewhere
    lp = lp.clone().requires_grad_()
    clipped_policy_loss(lp, torch.zeros(5), adv, 0.2)[0].sum().backward()
    torch.testing.assert_close(lp.grad, torch.tensor([0.0, 1.5, -0.5, 0.0, -2.0]))


def test_clipped_value_loss_by_hand():
    v, old, ret = torch.tensor([2.0, 0.5, 1.1]), torch.tensor([1.0, 1.0, 1.0]), torch.tensor([0.0, 1.5, 1.0])
    # 0.5 * max((2-0)^2, (1.2-0)^2) = 2; 0.5 * max((0.5-1.5)^2, (0.8-1.5)^2) = 0.5; 0.5 * max(0.01, 0.01)
    torch.testing.assert_close(clipped_value_loss(v, old, ret, 0.2), torch.tensor([2.0, 0.5, 0.005]))


def test_k3_kl():
    lp, ref = torch.tensor([-1.0, -2.0, -0.5]), torch.tensor([-1.0, -1.0, -2.0])
    want = [0.0, math.e - 1 - 1, math.exp(-1.5) + 1.5 - 1]
    torch.testing.assert_close(kl_k3(lp, ref), torch.tensor(want))
    # its expectation under the policy is KL(p || q): check on a small categorical
    p, q = torch.tensor([0.7, 0.2, 0.1]), torch.tensor([0.4, 0.4, 0.2])
    exact = float((p * (p / q).log()).sum())
    torch.testing.assert_close(float((p * kl_k3(p.log(), q.log())).sum()), exact)


def test_token_logps_entropy_matches_full_softmax():
    torch.manual_seed(0)
    h, w = torch.randn(2, 6, 8), torch.randn(30, 8)
    y = torch.randint(0, 30, (2, 6))
    y[0, :2] = IGNORE
    lp, ent = token_logps_entropy(h, w, y, chunk=4)
    full = torch.log_softmax(h @ w.t(), -1)
    want_lp = torch.where(y == IGNORE, 0.0, full.gather(-1, y.clamp_min(0)[..., None])[..., 0])
    want_ent = torch.where(y == IGNORE, 0.0, -(full.exp() * full).sum(-1))
    torch.testing.assert_close(lp, want_lp)
    torch.testing.assert_close(ent, want_ent)


def test_whiten_and_rollout_collate():
    x, m = torch.tensor([[5.0, 1.0, 2.0, 3.0]]), torch.tensor([[0, 1, 1, 1]])
    torch.testing.assert_close(whiten(x, m), torch.tensor([[0.0, -1.0, 0.0, 1.0]]))
    a = Rollout([1, 2, 3], [IGNORE, 3, IGNORE], [0, 0.5, 0], [0, -1.0, 0], [0, -2.0, 0], [0] * 3, [0] * 3)
    b = Rollout([4, 5], [5, IGNORE], [1.0, 0], [-0.5, 0], [-0.7, 0], [0] * 2, [0] * 2)
    batch = collate_rollouts([a, b], pad_id=7)
    assert batch.tokens.tolist() == [[1, 2, 3], [4, 5, 7]]
    assert batch.labels.tolist() == [[IGNORE, 3, IGNORE], [5, IGNORE, IGNORE]]
    assert batch.advantages.tolist() == [[0, 0.5, 0], [1.0, 0, 0]] and batch.valid_tokens == 2
