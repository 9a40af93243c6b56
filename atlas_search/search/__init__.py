"""The architecture search: an Optuna study driven by ask-and-tell, trials as Ray tasks
(DESIGN.md §7), and reading results back (status, export, report)."""
