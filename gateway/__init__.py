"""The Trainyard gateway: /v1/datasets, /v1/finetune and the internal /v1/dataservice/* API in front
of the trainer services (see docs/gateway.md)."""

from common.components import Component, Kind

PUBLIC = Component("gateway.app:app", 8080, Kind.gateway)
INTERNAL = Component("gateway.app:internal_app", 8090, Kind.gateway)  # /v1/dataservice only, inside a cluster
