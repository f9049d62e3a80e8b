"""Delivery from each pool's own source addresses: the scheduler (one lane per pool and
destination), the SMTP transaction, and what becomes of each recipient's reply."""
