"""DNS lookups: the resolver (transport, retries, CNAME chains, single flight, the Rust cache),
the sender-domain check and MX resolution for delivery."""
