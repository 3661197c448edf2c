"""`python -m sipmob.slpda`: the same as the `sipmob-slpda` command."""

from sipmob.slpda.main import main

main()
