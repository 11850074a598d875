"""Crafted messages shared by the tests of the one header reader and its consumers."""

# Issue 9's block: DKIM, ARC, DMARC and the scanner once each read it differently.
CRAFTED = (
    b"From: a@good.example\r\n"
    b"Bogus line without colon\r\n"
    b"From: b@evil.example\r\n"
    b"Subject: OFFICIAL-SENSITIVE\r\n"
    b"\r\n"
    b"body\r\n"
)
