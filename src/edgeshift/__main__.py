from edgeshift.cli.main import main

main()
