"""cagul: the CAGUL unlearning framework built on ``cagul_kernels`` (work in progress)."""
