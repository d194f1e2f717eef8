"""``/v1/migrations``: move or copy datasets between storage tiers."""
