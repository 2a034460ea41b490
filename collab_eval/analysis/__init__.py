"""Analysis of finished runs: reading records, rescoring, trade-off curves, reports and the regression check."""
