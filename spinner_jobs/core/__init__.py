"""What every layer shares: wire names, models, errors. Imports nothing of ours."""
