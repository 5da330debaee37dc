"""feclip.dct against scipy.fft and numpy.fft, in float64."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.fft
import torch

from feclip.dct import (
    BASES,
    canonical_basis,
    dct2,
    dct2_flat_basis,
    dct_basis,
    dct_mean_filter,
    frequency_basis,
    hartley_basis,
    idct2,
)

ATOL = 1e-6


def _randn(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.float64)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_dct_basis_is_orthonormal_and_equals_scipy_dct_of_unit_vectors(n: int) -> None:
    basis = dct_basis(n, dtype=torch.float64)
    torch.testing.assert_close(basis @ basis.T, torch.eye(n, dtype=torch.float64), atol=1e-12, rtol=0)
    # Column i of the basis is the DCT of the i-th unit vector.
    expected = scipy.fft.dct(np.eye(n), norm="ortho", axis=0)
    np.testing.assert_allclose(basis.numpy(), expected, atol=1e-12)


def test_dct_basis_dtype_and_bad_length() -> None:
    assert dct_basis(4).dtype == torch.float32
    with pytest.raises(ValueError, match="at least 1"):
        dct_basis(0)


@pytest.mark.parametrize("shape", [(5, 5), (4, 7), (7, 3), (2, 3, 6, 4)])
def test_dct2_matches_scipy_dctn(shape: tuple[int, ...]) -> None:
    x = _randn(*shape)
    expected = scipy.fft.dctn(x.numpy(), norm="ortho", axes=(-2, -1))
    np.testing.assert_allclose(dct2(x).numpy(), expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("shape", [(5, 5), (4, 7), (2, 3, 6, 4)])
def test_idct2_inverts_dct2_and_matches_scipy_idctn(shape: tuple[int, ...]) -> None:
    x = _randn(*shape)
    torch.testing.assert_close(idct2(dct2(x)), x, atol=ATOL, rtol=0)
    expected = scipy.fft.idctn(x.numpy(), norm="ortho", axes=(-2, -1))
    np.testing.assert_allclose(idct2(x).numpy(), expected, atol=ATOL, rtol=0)


def test_dct2_first_coefficient_is_the_scaled_mean() -> None:
    x = _randn(4, 6)
    assert dct2(x)[0, 0].item() == pytest.approx(x.mean().item() * math.sqrt(4 * 6), abs=ATOL)


@pytest.mark.parametrize("n", [2, 3, 5])
def test_flat_basis_acts_on_flattened_windows(n: int) -> None:
    x = _randn(n, n)
    flat = dct2_flat_basis(n, dtype=torch.float64)
    assert flat.shape == (n * n, n * n)
    torch.testing.assert_close(flat @ x.flatten(), dct2(x).flatten(), atol=ATOL, rtol=0)
    torch.testing.assert_close(flat.T @ flat, torch.eye(n * n, dtype=torch.float64), atol=1e-12, rtol=0)


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_mean_filter_gives_the_mean_dct_coefficient(n: int) -> None:
    weights = dct_mean_filter(n, dtype=torch.float64)
    for _ in range(3):
        x = _randn(n, n)
        expected = scipy.fft.dctn(x.numpy(), norm="ortho").mean()
        assert (weights * x).sum().item() == pytest.approx(expected, abs=ATOL)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7])
def test_hartley_basis_is_orthonormal_and_is_re_minus_im_of_the_dft(n: int) -> None:
    basis = hartley_basis(n, dtype=torch.float64)
    torch.testing.assert_close(basis @ basis.T, torch.eye(n, dtype=torch.float64), atol=1e-12, rtol=0)
    dft_matrix = np.fft.fft(np.eye(n), axis=0)  # F[k, i] = exp(-2 pi i k i / n)
    np.testing.assert_allclose(basis.numpy(), (dft_matrix.real - dft_matrix.imag) / math.sqrt(n), atol=1e-12)
    x = np.random.default_rng(n).standard_normal(n)
    spectrum = np.fft.fft(x)
    np.testing.assert_allclose(basis.numpy() @ x, (spectrum.real - spectrum.imag) / math.sqrt(n), atol=1e-12)


def test_frequency_basis_by_name() -> None:
    torch.testing.assert_close(frequency_basis("dct", 4), dct_basis(4))
    torch.testing.assert_close(frequency_basis("hartley", 4), hartley_basis(4))
    torch.testing.assert_close(frequency_basis("dft", 4), hartley_basis(4))  # the Hartley basis' old name
    assert BASES == ("dct", "hartley") and canonical_basis("dft") == "hartley" and canonical_basis("dct") == "dct"
    with pytest.raises(ValueError, match="unknown frequency basis 'wavelet'"):
        frequency_basis("wavelet", 4)
    with pytest.raises(ValueError, match="at least 1"):
        hartley_basis(0)


@pytest.mark.parametrize("basis", ["dct", "hartley"])
def test_flat_basis_and_mean_filter_of_either_basis_against_a_direct_transform(basis: str) -> None:
    """The fixed matrices FFE and LFS use, written out window by window in float64."""
    n = 3
    matrix = frequency_basis(basis, n, dtype=torch.float64)
    windows = _randn(5, n, n)
    coefficients = matrix @ windows @ matrix.T  # (5, n, n): the 2-D transform of each window
    flat = dct2_flat_basis(n, basis=basis, dtype=torch.float64)
    torch.testing.assert_close(windows.flatten(1) @ flat.T, coefficients.flatten(1), atol=1e-12, rtol=0)
    mean_filter = dct_mean_filter(n, basis=basis, dtype=torch.float64)
    torch.testing.assert_close((windows * mean_filter).sum(dim=(1, 2)), coefficients.mean(dim=(1, 2)), atol=1e-12, rtol=0)
