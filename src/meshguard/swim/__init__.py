"""Sans-IO SWIM membership core."""
