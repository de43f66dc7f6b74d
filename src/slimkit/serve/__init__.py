"""Serving a slimkit artifact over HTTP, and measuring a running server.

`slimkit optimize` ends in a `best/` folder; this package is what puts that folder behind an
endpoint: an ASGI app (`app`), a dynamic batcher that merges concurrent requests into the
batches the runtimes are fast at (`batcher`), Prometheus metrics (`metrics`) and a bounded load
generator (`loadtest`). Nothing here is imported by `import slimkit`.
"""
