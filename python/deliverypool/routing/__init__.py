"""Deciding the pool: the router joins the Rust classifier (scan, DSN detection, policy) with
the sender-domain check."""
