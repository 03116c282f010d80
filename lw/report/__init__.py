"""Reports on finished runs: a sweep's tables and figures (analysis), the `lw-compare` command
(compare) and the paper's reported numbers they are set beside (paper_results)."""
