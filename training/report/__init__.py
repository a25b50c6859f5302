"""Stage 5: the HTML report with plots and concept cards."""
