"""The Trainyard gateway: /v1/datasets, /v1/finetune and the internal /v1/dataservice/* API in front
of the trainer services (see docs/gateway.md)."""
