"""Helpers the tests share. Fixtures stay in `tests/conftest.py`; what they and the tests build on lives here.

* `services`: the test API keys, `base_settings` for a test service, and the types of the service and client
  factory fixtures.
* `events`: WebhookEvents as the gateway builds them, putting them on the event streams, and reading the
  consumer group's state and dead letters back.
* `gateway`: test settings and Xsolla secrets for a gateway, the fact sheet's payloads, signing and posting
  webhooks as Xsolla does, reading back the event streams.
* `waiting`: `eventually`, the one way a test waits for something to become true.
"""
