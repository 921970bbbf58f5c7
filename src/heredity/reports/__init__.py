"""Reports: lineage rendering; tables, intervals and plots arrive with the experiments."""
