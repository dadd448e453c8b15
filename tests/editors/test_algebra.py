"""The editors' linear algebra on random matrices: rank-one ROME update, its multi-key form and
AlphaEdit's null-space update."""

import warnings

import numpy as np
import pytest
import torch

from lalm_interp.cache import nullspace_projector
from lalm_interp.editors import EditorWarning, multi_key_update, null_space_update, rank_one_update
from lalm_interp.editors.rome import multi_key_mix, regularised


def rand(*shape, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).standard_normal(shape))


@pytest.mark.parametrize("use_c", [False, True])
def test_rank_one_hits_the_value_and_has_rank_one(use_c):
    W, k, v = rand(12, 20, seed=1), rand(20, seed=2), rand(12, seed=3)
    K = rand(20, 200, seed=4)
    C = K @ K.T / 200 if use_c else None
    dW = rank_one_update(W, k, v, C)
    assert torch.allclose((W + dW) @ k, v, atol=1e-5, rtol=0)
    assert torch.linalg.matrix_rank(dW) == 1
    # float32 weights: still W' k* = v* to 1e-5 (relative to |v|)
    W32 = W.float() + dW.float()
    assert float(((W32.double() @ k) - v).norm() / v.norm()) < 1e-5


def test_identity_c_is_the_minimum_norm_solution():
    W, k, v = rand(8, 15, seed=5), rand(15, seed=6), rand(8, seed=7)
    dW = rank_one_update(W, k, v, None)
    r = v - W @ k
    # every solution of dW k = r is dW + X (I - k k^T / k^T k); ours is orthogonal to that affine set
    for s in range(5):
        X = rand(8, 15, seed=10 + s)
        other = dW + X @ (torch.eye(15, dtype=torch.float64) - torch.outer(k, k) / (k @ k))
        assert torch.allclose(other @ k, r, atol=1e-10)
        assert dW.norm() <= other.norm() + 1e-12
    assert torch.allclose(dW, torch.outer(r, k) @ torch.linalg.pinv(torch.outer(k, k)), atol=1e-10)


def test_second_moment_changes_the_update_direction():
    W, k, v = rand(6, 10, seed=8), rand(10, seed=9), rand(6, seed=10)
    K = rand(10, 50, seed=11) * torch.linspace(0.1, 3, 10, dtype=torch.float64)[:, None]
    d_id, d_c = rank_one_update(W, k, v, None), rank_one_update(W, k, v, K @ K.T / 50)
    assert not torch.allclose(d_id, d_c, atol=1e-6)


def test_null_space_update_leaves_protected_keys_alone():
    d_in, d_out = 24, 10
    K0 = rand(d_in, 12, seed=12) @ rand(12, 300, seed=13)  # protected keys span a 12-dim subspace
    P = torch.from_numpy(nullspace_projector(K0.numpy() @ K0.numpy().T / 300, 1e-8))
    assert round(float(torch.trace(P))) == d_in - 12
    W = rand(d_out, d_in, seed=14)
    K1, R = rand(d_in, 3, seed=15), rand(d_out, 3, seed=16)
    Kp = rand(d_in, 4, seed=17)
    for kp in (None, Kp @ Kp.T):
        dW = null_space_update(R, K1, P, kp, l2=1.0)
        assert torch.allclose((W + dW) @ K0, W @ K0, atol=1e-5, rtol=0)
        assert dW.norm() > 0
    # with a small ridge the edit reaches its residual on the null-space part of the keys
    dW = null_space_update(R, P @ K1, P, None, l2=1e-9)
    assert torch.allclose(dW @ (P @ K1), R, atol=1e-5)


def test_singular_second_moment_is_regularised_with_a_warning():
    K = rand(10, 4, seed=18)  # rank 4 < 10
    C = K @ K.T
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        Cr = regularised(C, 1e-2, 1e-7, "test")
    assert any(issubclass(x.category, EditorWarning) and "singular" in str(x.message) for x in w)
    lam = 1e-2 * float(torch.trace(C)) / 10
    assert torch.allclose(Cr, C + lam * torch.eye(10, dtype=C.dtype))
    W, k, v = rand(5, 10, seed=19), rand(10, seed=20), rand(5, seed=21)
    assert torch.allclose((W + rank_one_update(W, k, v, Cr)) @ k, v, atol=1e-5)
    full = rand(10, 100, seed=22)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert regularised(full @ full.T, 1e-2, 1e-7, "test") is not None


@pytest.mark.parametrize("use_c", [False, True])
def test_multi_key_update_hits_every_value_with_rank_at_most_n(use_c):
    W, K, V = rand(12, 20, seed=30), rand(20, 5, seed=31), rand(12, 5, seed=32)
    corpus = rand(20, 200, seed=33)
    C = corpus @ corpus.T / 200 if use_c else None
    dW = multi_key_update(W, K, V, C)
    assert torch.allclose((W + dW) @ K, V, atol=1e-8, rtol=0)
    assert torch.linalg.matrix_rank(dW) == 5
    # one key: exactly ROME's rank-one update
    one = multi_key_update(W, K[:, :1], V[:, :1], C)
    assert torch.allclose(one, rank_one_update(W, K[:, 0], V[:, 0], C), atol=1e-10)


def test_multi_key_update_is_the_minimum_c_norm_solution():
    W, K, V = rand(6, 10, seed=34), rand(10, 3, seed=35), rand(6, 3, seed=36)
    corpus = rand(10, 80, seed=37) * torch.linspace(0.2, 2, 10, dtype=torch.float64)[:, None]
    C = corpus @ corpus.T / 80
    dW = multi_key_update(W, K, V, C)
    Q = torch.eye(10, dtype=torch.float64) - K @ torch.linalg.pinv(K)  # X Q adds nothing on the keys
    for s in range(5):
        other = dW + rand(6, 10, seed=40 + s) @ Q
        assert torch.allclose(other @ K, dW @ K, atol=1e-10)
        assert torch.trace(dW @ C @ dW.T) <= torch.trace(other @ C @ other.T) + 1e-10


def test_multi_key_ridge_shrinks_and_copes_with_repeated_keys():
    W, V = rand(4, 8, seed=50), rand(4, 3, seed=51)
    k = rand(8, seed=52)
    K = torch.stack([k, k, rand(8, seed=53)], 1)  # two identical frames: K^T K is singular
    dW = multi_key_update(W, K, V, None, reg=1e-2)
    assert torch.isfinite(dW).all() and torch.linalg.matrix_rank(dW) <= 2
    M0, M1 = multi_key_mix(K[:, 1:], None, 0.0), multi_key_mix(K[:, 1:], None, 0.5)
    assert torch.allclose(M0 @ K[:, 1:], torch.eye(2, dtype=torch.float64), atol=1e-10)
    assert float(torch.linalg.eigvalsh(M1 @ K[:, 1:]).max()) < 1  # the ridge shrinks what is reached


def test_absolute_null_space_cut_matches_alphaedits_svd_reference():
    """AlphaEdit_main.get_project: U, S = svd(cov); P = U[:, S < threshold] U[:, S < threshold]ᵀ on the
    count-normalised key covariance (its nullspace_threshold = 2e-2)."""
    K = rand(16, 400, seed=60) * torch.logspace(-2, 0.5, 16, dtype=torch.float64)[:, None]
    cov = K @ K.T / 400
    U, S, _ = torch.linalg.svd(cov)
    small = S < 2e-2
    ref = U[:, small] @ U[:, small].T
    P = torch.from_numpy(nullspace_projector(cov.numpy(), 2e-2))
    assert 0 < int(small.sum()) < 16
    assert torch.allclose(P, ref, atol=1e-10)
