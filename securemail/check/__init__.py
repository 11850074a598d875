"""The domain assurance checker: how a domain's email meets the secure email standard.

The retired NCSC Mail Check's job: MX, STARTTLS/TLS, SPF, DKIM, DMARC, MTA-STS, TLS-RPT
and DANE, each as lookup (I/O) → parse (pure) → evaluate (pure rules that return
``Finding``s), graded into one verdict per domain.
"""
