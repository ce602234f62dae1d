"""A/B splits: traffic divided between routing policies by weight, sticky per tenant or user.

`config` (the `routing.splits` section, imported by switchpoint.config), `assign` (which arm a
request belongs to) and `book` (what each arm served)."""
