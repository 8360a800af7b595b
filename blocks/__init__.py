"""Setup scripts for the Prefect blocks the countries pipeline uses."""
