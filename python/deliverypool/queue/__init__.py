"""The durable queue: the SQLite spool (group commit), its schema and migrations, and the
read-only views used by ``deliverypool queue``."""
