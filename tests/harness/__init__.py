"""Real peers for the tests: DNS, SMTP, TLS, HTTPS and Postfix."""
