"""Offline training from the decision log: `policy-server train` (see `cli`) and the trainers (`trainer`)."""
