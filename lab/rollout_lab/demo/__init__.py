"""`policy-rollouts demo`: the whole product on one machine, from logged data to promotion and rollback."""
