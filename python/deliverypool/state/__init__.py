"""State shared by the relay's workers and nodes: counters and restrictions (sender limits),
with memory, SQLite and Redis backends."""
