"""Thin asyncio adapters: sockets in, codec + store + policy, sockets out."""
