"""The server's domain layer: what tasks, queues, deliveries and workers do, as functions over a SQLAlchemy
`Connection` (the caller's transaction) and plain values. No request objects here: `services/` adapts API calls to
these functions, and the background sweeps (`lifecycle.py`) call them directly."""
