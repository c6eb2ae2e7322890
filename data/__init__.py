"""Dataset manifests (datasets.yaml), installed as the resource package fedrec.manifests. No data here."""
