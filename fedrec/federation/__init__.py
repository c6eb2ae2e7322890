"""The federated engine: batched clients, validation, exact sparse server, literal reference, round loop."""
