"""``tokenize`` on a Dask cluster: the parts of :func:`~native_mm.training.shards.tokenize`
as Dask tasks, then the merge here.

Dask (``distributed``) schedules, retries and reports; we only split the work. First each
tar, folder, Parquet file or dataset is converted into documents by a task of its own,
then each task is one ``tokenize(..., part=(k, n))`` writing its shards into the shared
output folder (a cluster needs a filesystem all workers see, as a Slurm array does), and the
merge writes the manifest: the same shard bytes as one process. ``address`` is a running scheduler
(``tcp://host:8786``) or ``local:N``, a cluster of N worker processes on this machine.
Dask is the ``scale`` extra: ``pip install native-mm[scale]``.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

from native_mm import inputs as formats
from native_mm.extras import require
from native_mm.samples_in import DEFAULT_ORDERS
from native_mm.training.shards import converted_dir, tokenize


def _silent(_: str) -> None:  # a worker's log lines would interleave; the merge reports
    pass


def _client(address: str) -> Any:
    from distributed import Client, LocalCluster

    if address.startswith("local:"):
        logging.getLogger("distributed").setLevel(logging.WARNING)  # its startup chatter
        n = int(address.split(":", 1)[1])
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                               dashboard_address=":0")  # fmt: skip
        return Client(cluster)
    return Client(address)


def tokenize_on_dask(
    inputs: list[str | Path],
    out_dir: str | Path,
    tokenizers: str | Path,
    address: str = "local:2",
    parts: int | None = None,
    log: Any = print,
    **kwargs: Any,
) -> dict:
    """Tokenize in ``parts`` Dask tasks (default: one per worker), then merge; returns
    the manifest. ``kwargs`` go to every part and the merge (orders, layout, ...)."""
    require("distributed", "scale", "native-mm tokenize --dask")
    inputs = [str(Path(p).resolve()) for p in inputs]  # workers may start elsewhere
    out, toks = str(Path(out_dir).resolve()), str(Path(tokenizers).resolve())
    with _client(address) as client:
        n = parts or max(1, len(client.scheduler_info()["workers"]))
        log(f"tokenize: {n} parts on {client.scheduler.address} ({address})")
        # foreign inputs (tars, folders, Parquet, datasets) converted once, one task each;
        # the parts then read the conversions instead of each redoing all of them
        foreign = [p for p in inputs if formats.converts(p)]
        convert = functools.partial(formats.to_documents, orders=kwargs.get("orders",
                                    DEFAULT_ORDERS), columns=kwargs.get("columns"))  # fmt: skip
        dests = [str(converted_dir(out, p)) for p in foreign]
        for (_, report), p in zip(client.gather(client.map(convert, foreign, dests, pure=False)),
                                  foreign, strict=True):  # fmt: skip
            log(f"  {Path(p).name}: {report.documents} samples, {report.skipped} skipped")
        # a partial: `workers` is also a keyword of client.submit (which workers may run it)
        job = functools.partial(tokenize, workers=0, log=_silent, **kwargs)
        futures = [client.submit(job, inputs, out, toks, part=(k, n), pure=False) for k in range(n)]
        for done in client.gather(futures):
            log(f"  part {done['part'][0]}/{n}: shards {done['shards']}, "
                f"{done['documents']} documents")  # fmt: skip
        if address.startswith("local:"):
            client.cluster.close()
    return tokenize(inputs, out, toks, merge=True, log=log, **kwargs)
