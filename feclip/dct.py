"""The orthonormal 2-D discrete cosine transform (DCT-II) as matrix products.

FE-CLIP looks at ViT patch tokens through small ``PxP`` windows and asks which
spatial frequencies each window holds. For windows this small a DCT is cheapest
as a product with a fixed basis matrix: no FFT set-up, no complex numbers, and
the matrix can live on the module as a buffer.

The 1-D basis of size ``n`` is the matrix ``C`` with rows

.. math::
    C_{k,i} = \\alpha_k \\cos\\left(\\frac{\\pi (2i + 1) k}{2n}\\right),\\quad
    \\alpha_0 = \\sqrt{1/n},\\ \\alpha_{k>0} = \\sqrt{2/n},

so ``C @ C.T == I`` and the 2-D transform of a window ``x`` of shape ``(n, m)``
is ``C_n @ x @ C_m.T``, the same as ``scipy.fft.dctn(x, norm="ortho")``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "BASES",
    "dct_basis",
    "hartley_basis",
    "canonical_basis",
    "frequency_basis",
    "dct2",
    "idct2",
    "dct2_flat_basis",
    "dct_mean_filter",
]


def dct_basis(n: int, *, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Tensor:
    """Orthonormal DCT-II basis matrix.

    Args:
        n: Transform length.
        dtype: Floating dtype of the result.
        device: Device of the result.

    Returns:
        ``C`` of shape ``(n, n)``: row ``k`` is the ``k``-th cosine, so ``C @ x`` is the DCT of ``x``.
    """
    if n < 1:
        raise ValueError(f"DCT length must be at least 1, got {n}")
    i = torch.arange(n, dtype=torch.float64)
    k = i[:, None]
    basis = torch.cos(math.pi * (2 * i[None, :] + 1) * k / (2 * n))
    basis[0] *= math.sqrt(1.0 / n)
    basis[1:] *= math.sqrt(2.0 / n)
    return basis.to(dtype=dtype, device=device)


def hartley_basis(n: int, *, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Tensor:
    """Orthonormal discrete Hartley basis, the real form of the DFT (``Re(F) - Im(F)``).

    Used by the ablation that swaps FE-CLIP's DCT for a Fourier transform while keeping
    real coefficients, so the same ``Linear`` and convolution apply unchanged.

    Args:
        n: Transform length.
        dtype: Floating dtype of the result.
        device: Device of the result.

    Returns:
        ``H`` of shape ``(n, n)`` with ``H[k, i] = cas(2 pi k i / n) / sqrt(n)``, ``cas = cos + sin``.
    """
    if n < 1:
        raise ValueError(f"transform length must be at least 1, got {n}")
    angle = 2 * math.pi * torch.outer(torch.arange(n, dtype=torch.float64), torch.arange(n, dtype=torch.float64)) / n
    return ((torch.cos(angle) + torch.sin(angle)) / math.sqrt(n)).to(dtype=dtype, device=device)


FREQUENCY_BASES = {"dct": dct_basis, "hartley": hartley_basis}
BASES: tuple[str, ...] = tuple(FREQUENCY_BASES)
# Earlier name of the Hartley basis: configs, checkpoints and command lines that say "dft" meant it.
_BASIS_ALIASES = {"dft": "hartley"}


def canonical_basis(name: str) -> str:
    """A basis name with the old spelling ``"dft"`` read as ``"hartley"``; unknown names are an error.

    Raises:
        ValueError: Naming the valid bases.
    """
    name = _BASIS_ALIASES.get(name, name)
    if name not in FREQUENCY_BASES:
        raise ValueError(f"unknown frequency basis {name!r}; choose one of {list(BASES)} ('dft' is read as 'hartley')")
    return name


def frequency_basis(
    name: str, n: int, *, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> Tensor:
    """Orthonormal 1-D basis by name: ``"dct"`` (:func:`dct_basis`) or ``"hartley"`` (:func:`hartley_basis`, also ``"dft"``)."""
    return FREQUENCY_BASES[canonical_basis(name)](n, dtype=dtype, device=device)


def _bases_for(x: Tensor) -> tuple[Tensor, Tensor]:
    rows = dct_basis(x.shape[-2], dtype=x.dtype, device=x.device)
    cols = rows if x.shape[-1] == x.shape[-2] else dct_basis(x.shape[-1], dtype=x.dtype, device=x.device)
    return rows, cols


def dct2(x: Tensor) -> Tensor:
    """2-D orthonormal DCT-II over the last two axes.

    Args:
        x: Tensor of shape ``(..., n, m)``.

    Returns:
        Coefficients of shape ``(..., n, m)``; ``[..., 0, 0]`` is the (scaled) window mean.
    """
    rows, cols = _bases_for(x)
    return rows @ x @ cols.T


def idct2(coefficients: Tensor) -> Tensor:
    """Inverse of :func:`dct2` (the orthonormal DCT-III) over the last two axes.

    Args:
        coefficients: Tensor of shape ``(..., n, m)``.

    Returns:
        Spatial values of shape ``(..., n, m)``.
    """
    rows, cols = _bases_for(coefficients)
    return rows.T @ coefficients @ cols


def dct2_flat_basis(
    n: int, *, basis: str = "dct", dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> Tensor:
    """2-D transform of an ``n x n`` window as one matrix acting on the flattened window.

    ``K = kron(C, C)``, so ``K @ x.flatten() == dct2(x).flatten()`` for ``x`` of shape
    ``(n, n)`` flattened row-major. ``K`` is orthogonal, hence ``K.T`` inverts it.

    Args:
        n: Window side.
        basis: The 1-D basis ``C``: ``"dct"`` or ``"hartley"`` (:func:`frequency_basis`).
        dtype: Floating dtype of the result.
        device: Device of the result.

    Returns:
        ``K`` of shape ``(n * n, n * n)``.
    """
    matrix = frequency_basis(basis, n, dtype=torch.float64)
    return torch.kron(matrix, matrix).to(dtype=dtype, device=device)


def dct_mean_filter(
    n: int, *, basis: str = "dct", dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> Tensor:
    """The fixed filter equal to the mean of a window's 2-D DCT coefficients.

    The DCT is linear, so the signed mean of the ``n x n`` coefficients of a window
    ``x`` is ``sum_ij w_ij x_ij`` with ``w = outer(s, s) / n**2`` and ``s = C.sum(0)``
    (the column sums of the basis). A sliding mean of DCT coefficients is therefore
    one correlation with ``w``: no window ever needs to be transformed. The same holds for
    any linear basis (``basis="hartley"``).

    Args:
        n: Window side.
        basis: The 1-D basis ``C``: ``"dct"`` or ``"hartley"`` (:func:`frequency_basis`).
        dtype: Floating dtype of the result.
        device: Device of the result.

    Returns:
        ``w`` of shape ``(n, n)``.
    """
    column_sums = frequency_basis(basis, n, dtype=torch.float64).sum(dim=0)
    return (torch.outer(column_sums, column_sums) / n**2).to(dtype=dtype, device=device)
