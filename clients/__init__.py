"""This repository's ClientApp entry point (``clients.client_app:app``)."""
