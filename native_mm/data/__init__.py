"""Built-in small datasets (digit images, spoken digits) used by recipes and tests."""
