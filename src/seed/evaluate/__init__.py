"""The eval stage: verifiable tasks, judges, statistics and the HTML report."""
