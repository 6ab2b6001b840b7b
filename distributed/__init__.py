"""qrr.distributed: reranking on Ray (the [ray] extra): `qrr rerank-batch` on a pool of actors, `qrr serve --ray`.

Importing this package does not import Ray; its modules do.
"""

RAY_EXTRA = "this command needs the ray extra (Ray Serve, Ray Data): in the qrr clone run pip install -e '.[ray]'"
