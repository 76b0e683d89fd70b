"""This repository's ClientApp (``clients.client_app:app``) and its local training."""
