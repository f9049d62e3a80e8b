"""What a message is made of: addresses and domains (the one parser), header helpers, and the
DSN writer. Nothing here does I/O."""
