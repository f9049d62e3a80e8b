"""Watches over the relay's own standing: the blocklist watch of the pools' source addresses
(:mod:`deliverypool.watch.dnsbl`)."""
