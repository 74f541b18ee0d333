"""HTTP: the route table, handlers, Range parsing, and the error table."""
