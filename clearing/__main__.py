from clearing.tools.cli import main

main()
