"""`python -m sipmob.transcoder`: the same as the `sipmob-transcoder` command."""

from sipmob.transcoder.main import main

main()
