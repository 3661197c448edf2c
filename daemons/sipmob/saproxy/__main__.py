"""`python -m sipmob.saproxy`: the same as the `sipmob-saproxy` command."""

from sipmob.saproxy.main import main

main()
