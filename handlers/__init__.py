"""Channel adapters: platform payloads in, channel-neutral messages to the core, replies out."""
