"""TLS for the client and peer listeners (tls.py) and test/dev certificates (certs.py)."""
