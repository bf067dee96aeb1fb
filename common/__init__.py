"""Trainyard's shared core: imported by the gateway, the services and the training program."""
