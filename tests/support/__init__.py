"""Shared test helpers: real servers on loopback ports and the fixtures that start them."""
