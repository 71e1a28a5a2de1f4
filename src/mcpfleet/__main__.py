from mcpfleet.cli import main

main()
