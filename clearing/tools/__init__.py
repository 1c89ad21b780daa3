"""The tools around the product: the command line, the client, the demo and its city."""
