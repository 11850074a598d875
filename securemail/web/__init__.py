"""The secure portal's web layer: the pages a recipient outside the secure boundary uses
to open, read, download from and reply to a message the gateway stored for them.

It decides nothing about storage, keys, tokens or passcodes: those are the portal core's
(``securemail.portal``), reached only through the ``PortalBackend`` protocol in
``backend.py``. What is decided here is what a browser is shown and allowed: the routes
(``app.py``), how a stored message becomes a safe page (``message_view.py``,
``sanitise.py``), the CSRF tokens, rate limits, body bounds and response headers
(``guard.py``), and the HTTPS listener (``serve.py``).
"""
