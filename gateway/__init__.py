"""A quota-enforcing API gateway."""
