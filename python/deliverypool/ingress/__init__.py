"""Mail coming in: the aiosmtpd protocol and the routing handler that accepts, classifies and
spools each message before answering 250."""
