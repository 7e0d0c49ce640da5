"""eqxform."""
