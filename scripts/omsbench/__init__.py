"""`just bench`: the store comparison benchmark (see __main__)."""
