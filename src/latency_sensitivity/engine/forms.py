"""How a fused product's input holds its row, shared by the Triton kernels and their torch forms (no Triton needed)."""

from __future__ import annotations


# How a fused product's input holds its row (kernels.gemv_kernel's X_MODE; defined here, as kernels needs
# Triton to import): the row; a residual pair to add; gate/up for SiLU(gate) * up.
X_ROW, X_PAIR, X_SILU_MUL = 0, 1, 2
