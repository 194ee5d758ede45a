"""Payment providers, one package each, behind the small interfaces of `core.webhooks` (what the gateway asks
of a provider's webhooks) and `core.order_sources` (what order tracking asks of a provider's order status).

Only the composition roots import a provider package: the gateway's (`webhook_gateway.app`,
`webhook_gateway.__main__`) and the service's (`server.app`, `server.__main__`), and `tools/` which compose
both. A second provider is a new package beside `providers.xsolla`, nothing more.
"""
