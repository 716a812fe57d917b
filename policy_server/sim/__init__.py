"""Simulated environments (Gymnasium API) that play the role of production traffic in local mode and the demo."""

from policy_server.sim.pricing import ENV_ID, PRICE_LEVELS, PricingEnv, register

__all__ = ["ENV_ID", "PRICE_LEVELS", "PricingEnv", "register"]
