"""Storage: the job store (``jobstore``: jobs, owners and published layers in SQL, the one
source of truth), the results store (``results``: a folder or an object store of result files)
and why a write to the results disk failed (``disk``)."""
