"""Applications: the command line, the demo, the paper's reproduction and the report page."""
