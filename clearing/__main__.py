from clearing.cli import main

main()
