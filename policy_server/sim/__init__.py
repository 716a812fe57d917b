"""Simulated environments (Gymnasium API) that play the role of production traffic in local mode and the demo.

`pricing` (policy_rollouts/Pricing-v0): one customer per decision, a margin floor as the cost.
`cooling` (policy_rollouts/Cooling-v0): one day of 24 hourly decisions with delayed effects, overheat as the cost.
"""

from policy_server.sim.pricing import ENV_ID, PRICE_LEVELS, PricingEnv, register

__all__ = ["ENV_ID", "PRICE_LEVELS", "PricingEnv", "register"]
