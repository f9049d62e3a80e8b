"""Message authentication: DKIM (dkim.py); one module per mechanism."""
