"""One module per tab; each has a build_<tab>(...) that creates its components and wires events."""
