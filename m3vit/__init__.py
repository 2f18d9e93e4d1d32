"""The `m3vit` command line: a thin layer over library functions of `golden`, `hw` and `firmware`."""
