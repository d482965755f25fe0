"""Jobs: aquamask's pygeoapi manager (``manager``), the worker that runs one job (``worker``),
where it runs (``executors``: a forked process, or a task on a Dask cluster, ``dask_worker``),
and what is found without a record (``reconcile``). State lives in the job store
(``aquamask.processes.storage.jobstore``)."""
