"""target-customerio: a Singer target that syncs rows into Customer.io."""
