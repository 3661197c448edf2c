from sipmob.mdsm.main import main

main()
