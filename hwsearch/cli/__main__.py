"""`python -m hwsearch.cli`: the `hwsearch` command."""

from hwsearch.cli import main

main()
