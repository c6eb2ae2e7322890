"""Flower deployment of fedrec (issue 12): ServerApp, ClientApp, the upload codec (layer 5)."""
