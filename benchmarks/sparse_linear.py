"""Is a CSR sparse matmul faster than the dense one for a heavily pruned linear layer fed spikes?

Times ``F.linear(x, w)`` against ``(w_csr @ x.T).T`` on CPU for binary inputs (10% ones) and weights
pruned to 1% and 5% density, medians of 20 calls after a warm-up; prints the ratio. The runtime has
no sparse path yet: this measures whether one would pay, and where.

    python benchmarks/sparse_linear.py
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from spikeshield.runtime.sparse_conv import median_seconds


def per_call_ms(fn, calls: int = 20) -> float:
    """Milliseconds, the median of ``calls`` calls after a warm-up."""
    return 1000 * median_seconds(fn, calls)


def main() -> None:
    torch.manual_seed(0)
    print(f"# CPU, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print("| layer (out x in) | rows (T*N) | density | dense ms | CSR ms | CSR / dense |")
    print("|---|---|---|---|---|---|")
    for out_features, in_features, rows in [(120, 400, 256), (512, 4608, 256), (512, 4608, 2048),
                                             (4096, 4096, 256)]:
        for density in (0.01, 0.05):
            keep = torch.rand(out_features, in_features) < density
            weight = torch.randn(out_features, in_features) * keep
            x = (torch.rand(rows, in_features) < 0.1).float()
            csr = weight.to_sparse_csr()
            torch.testing.assert_close((csr @ x.T).T, F.linear(x, weight), rtol=1e-4, atol=1e-4)
            dense = per_call_ms(lambda x=x, weight=weight: F.linear(x, weight))
            sparse = per_call_ms(lambda x=x, csr=csr: (csr @ x.T).T)
            print(f"| {out_features} x {in_features} | {rows} | {density:.0%} | {dense:.3f} | "
                  f"{sparse:.3f} | {sparse / dense:.2f} |")


if __name__ == "__main__":
    main()
