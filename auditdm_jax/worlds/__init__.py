"""Worlds: one folder per audited world (its data, image generator, models and `System`)."""
