"""Console-script entry points that only parse arguments and print (issue 17's `cli/`)."""
