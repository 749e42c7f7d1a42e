"""What results become for people: the terminal summary, the HTML report, comparisons and exports."""
