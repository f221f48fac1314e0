"""Importing this module registers every add-on (regularisers, steppers) with sharpshift.methods.hooks.
One line per add-on module."""
